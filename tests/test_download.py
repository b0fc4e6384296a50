"""Pretrained weights from a URL, the optic-disc download, and .pdparams that cannot run code.

Every download goes to an HTTP server on 127.0.0.1 started here; nothing touches the internet.
"""
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import paddle
import pytest

from conftest import ROOT, make_tiny_optic, run_cli, write_tiny_config
from paddleseg.utils.checkpoint import (CheckpointError, load_pretrained_model, read_state_dict,
                                        safe_load_state_dict)
from paddleseg.utils.download import DownloadError, fetch_pretrained


# --- a local HTTP server that counts requests and can break transfers ------------------------------

class Server:
    """Serves ``routes[path] = bytes``; ``break_next[path] = n`` makes the next n answers announce
    the full length but send only half the body before closing the connection."""

    def __init__(self):
        self.routes, self.break_next, self.requests = {}, {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.break_next.get(self.path, 0) > 0:
                    server.break_next[self.path] -= 1
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, path, body):
        self.routes[path] = body
        return self.url(path)

    def count(self, path):
        return self.requests.count(path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def seg_home(tmp_path, monkeypatch):
    """SEG_HOME in tmp_path, and no proxy between the client and 127.0.0.1."""
    home = tmp_path / "seg_home"
    monkeypatch.setenv("SEG_HOME", str(home))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return home


def dead_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- tiny weights and archives ---------------------------------------------------------------------

def tiny_net(seed):
    paddle.seed(seed)
    return paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4))


def params_bytes(state):
    buf = io.BytesIO()
    paddle.save(state, buf)
    return buf.getvalue()


def tar_gz(members):
    """``{name: bytes}`` -> the bytes of a .tar.gz holding them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def weights_tar(net, folder="tiny"):
    """A PaddleSeg-style archive: ``folder/model.pdparams`` holding ``net``'s weights."""
    return tar_gz({f"{folder}/model.pdparams": params_bytes(net.state_dict())})


def zip_bytes(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)


def cache_entries(seg_home):
    folder = seg_home / "pretrained_model"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


# --- pretrained: URL -> download, unpack, cache ------------------------------------------------------

def test_url_is_downloaded_unpacked_cached_and_reused_offline(server, seg_home, capsys):
    source = tiny_net(1)
    url = server.serve("/dygraph/tiny_ssld.tar.gz", weights_tar(source, "tiny_ssld"))
    first = load_pretrained_model(tiny_net(2), url)
    assert same_weights(first, source)
    cached = seg_home / "pretrained_model" / "tiny_ssld" / "model.pdparams"  # PaddleSeg's layout
    assert cached.is_file()
    out = capsys.readouterr()
    assert "downloading tiny_ssld.tar.gz" in out.err and "(100%)" in out.err and "/s" in out.err
    assert "loaded 6/6 pretrained tensors into Sequential" in out.out

    server.close()  # the second run must not need the network at all
    second = load_pretrained_model(tiny_net(3), url)
    assert same_weights(second, source)
    assert server.count("/dygraph/tiny_ssld.tar.gz") == 1
    assert cache_entries(seg_home) == ["tiny_ssld"]  # no temporaries left behind


def test_plain_pdparams_url_and_a_colliding_cache_name(server, seg_home):
    a, b = tiny_net(1), tiny_net(2)
    url_a = server.serve("/cityscapes/bisenet/model.pdparams", params_bytes(a.state_dict()))
    url_b = server.serve("/voc/bisenet/model.pdparams", params_bytes(b.state_dict()))
    assert same_weights(load_pretrained_model(tiny_net(3), url_a), a)
    # PaddleSeg would name both "bisenet" and hand out a's weights for b's URL
    assert same_weights(load_pretrained_model(tiny_net(3), url_b), b)
    entries = cache_entries(seg_home)
    assert entries[0] == "bisenet" and entries[1].startswith("bisenet-") and len(entries) == 2
    assert same_weights(load_pretrained_model(tiny_net(3), url_a), a)
    assert server.count("/cityscapes/bisenet/model.pdparams") == 1


def test_zip_with_differently_named_weights(server, seg_home):
    source = tiny_net(1)
    url = server.serve("/w.zip", zip_bytes({"w/readme.txt": b"hi",
                                            "w/weights/best.pdparams": params_bytes(source.state_dict())}))
    path = fetch_pretrained(url)
    assert path == str(seg_home / "pretrained_model" / "w" / "model.pdparams")
    assert same_weights(load_pretrained_model(tiny_net(2), path), source)


def test_a_directory_holding_model_pdparams_loads(tmp_path):
    source = tiny_net(1)
    paddle.save(source.state_dict(), str(tmp_path / "model.pdparams"))
    assert same_weights(load_pretrained_model(tiny_net(2), str(tmp_path)), source)


def test_interrupted_download_leaves_nothing_trusted_and_a_retry_succeeds(server, seg_home):
    source = tiny_net(1)
    path = "/tiny.tar.gz"
    url = server.serve(path, weights_tar(source))
    server.break_next[path] = 1
    with pytest.raises(DownloadError) as err:
        fetch_pretrained(url)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"cannot download {url} (the connection closed before the ")
    assert cache_entries(seg_home) == []  # neither the folder nor a half file under any name
    assert same_weights(load_pretrained_model(tiny_net(2), url), source)
    assert server.count(path) == 2


def test_a_killed_runs_leftovers_are_not_trusted(server, seg_home):
    """A kill mid-download leaves only a .tmp.NAME.PID folder; the next run downloads again and
    cleans it up."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = seg_home / "pretrained_model" / f".tmp.tiny.{dead.pid}"
    leftover.mkdir(parents=True)
    (leftover / "model.pdparams").write_bytes(b"half a file")
    source = tiny_net(1)
    url = server.serve("/tiny.tar.gz", weights_tar(source))
    assert same_weights(load_pretrained_model(tiny_net(2), url), source)
    assert server.count("/tiny.tar.gz") == 1
    assert cache_entries(seg_home) == ["tiny"]


def test_a_damaged_cached_file_says_how_to_download_again(server, seg_home):
    url = server.serve("/tiny.tar.gz", weights_tar(tiny_net(1)))
    cached = fetch_pretrained(url)
    with open(cached, "r+b") as f:  # e.g. a disk error, or PaddleSeg's non-atomic download
        f.truncate(100)
    with pytest.raises(CheckpointError) as err:
        load_pretrained_model(tiny_net(2), url)
    assert str(err.value).startswith(f"not a Paddle checkpoint: {cached}")
    assert str(err.value).endswith(f"delete {os.path.dirname(cached)} to download it again")


def test_404_and_unreachable_give_one_line_with_the_way_out(server, seg_home):
    missing = server.url("/nope/model.pdparams")
    with pytest.raises(DownloadError) as err:
        load_pretrained_model(tiny_net(1), missing)
    msg = str(err.value)
    assert msg.startswith(f"cannot download {missing} (HTTP 404")
    assert "pretrained: /path/to/model.pdparams" in msg and "\n" not in msg

    unreachable = f"http://127.0.0.1:{dead_port()}/hrnet_w18_ssld.tar.gz"
    with pytest.raises(DownloadError) as err:
        load_pretrained_model(tiny_net(1), unreachable)
    msg = str(err.value)
    assert msg.startswith(f"cannot download {unreachable} (Connection refused)")
    assert "pretrained: /path/to/model.pdparams" in msg and "\n" not in msg
    assert cache_entries(seg_home) == []


@pytest.mark.parametrize("member", ["../evil.txt", "tiny/../../evil.txt", "/tmp/evil_abs.txt"])
def test_archive_member_outside_the_folder_is_refused(server, seg_home, member):
    weights = params_bytes(tiny_net(1).state_dict())
    url = server.serve("/tiny.tar.gz", tar_gz({"tiny/model.pdparams": weights, member: b"owned"}))
    with pytest.raises(DownloadError, match="would land outside the target folder"):
        fetch_pretrained(url)
    assert cache_entries(seg_home) == []
    for base in (seg_home, seg_home / "pretrained_model", seg_home.parent):
        assert not (base / "evil.txt").exists()
    assert not os.path.exists("/tmp/evil_abs.txt")


def test_archive_with_a_symlink_is_refused(server, seg_home):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        link = tarfile.TarInfo("tiny/model.pdparams")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
    url = server.serve("/tiny.tar.gz", buf.getvalue())
    with pytest.raises(DownloadError, match="link or special file"):
        fetch_pretrained(url)
    assert cache_entries(seg_home) == []


def test_sha256_mismatch_is_refused_and_a_match_accepted(server, seg_home):
    body = weights_tar(tiny_net(1))
    url = server.serve("/tiny.tar.gz", body)
    with pytest.raises(DownloadError, match="expected " + "0" * 64):
        fetch_pretrained(f"{url}#sha256={'0' * 64}")
    assert cache_entries(seg_home) == []
    good = hashlib.sha256(body).hexdigest()
    assert os.path.isfile(fetch_pretrained(f"{url}#sha256={good}"))


def test_cli_without_network_exits_with_one_error_line(tmp_path, seg_home, tiny_optic_root):
    url = f"http://127.0.0.1:{dead_port()}/dygraph/hrnet_w18_small_v1_ssld.tar.gz"
    cfg = write_tiny_config(tmp_path / "fcn.yml", tiny_optic_root, model="FCN")
    with open(cfg, "a") as f:  # model: is the config's last section
        f.write(f"  backbone:\n    type: HRNet_W18_Small_V1\n    pretrained: {url}\n")
    proc = run_cli("train.py", "--config", cfg, "--iters", "1", "--save_dir", tmp_path / "out")
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith(f"error: cannot download {url} (Connection refused)")
    assert "pretrained: /path/to/model.pdparams" in lines[-1]


# --- lenient loading -----------------------------------------------------------------------------

def test_lenient_loading_reports_missing_unexpected_and_shape_mismatch(tmp_path, capsys):
    model = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.Linear(4, 2))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    del state["1.bias"]
    state["0.weight"] = np.zeros([3, 5], np.float32)
    state["extra.weight"] = np.ones([2], np.float32)
    state["0.bias"] = np.full([4], 7.0, np.float32)
    path = tmp_path / "partial.pdparams"
    paddle.save(state, str(path))
    load_pretrained_model(model, str(path))
    assert np.array_equal(model.state_dict()["0.bias"].numpy(), np.full([4], 7.0))
    line = [l for l in capsys.readouterr().out.splitlines() if "pretrained tensors" in l]
    assert len(line) == 1
    assert "loaded 2/4 pretrained tensors" in line[0]
    assert "1 missing (1.bias)" in line[0] and "1 unexpected (extra.weight)" in line[0]
    assert "1 shape mismatch (0.weight [3, 5] vs [3, 4])" in line[0]


def test_long_mismatch_lists_are_truncated(tmp_path, capsys):
    model = paddle.nn.Sequential(*[paddle.nn.Linear(2, 2) for _ in range(6)])
    paddle.save({"0.weight": model.state_dict()["0.weight"]}, str(tmp_path / "one.pdparams"))
    load_pretrained_model(model, str(tmp_path / "one.pdparams"))
    out = capsys.readouterr().out
    assert "loaded 1/12" in out
    assert "11 missing (0.bias, 1.weight, 1.bias, 2.weight, 2.bias, ... 6 more)" in out


# --- a checkpoint must not be able to run code ----------------------------------------------------

class _MakesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "model.pdparams"
    payload = {"conv.weight": np.zeros([2, 2], np.float32), "evil": _MakesAFile(str(marker))}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(CheckpointError) as err:
        read_state_dict(str(path))
    assert str(err.value).startswith(f"not a Paddle checkpoint: {path}")
    assert "open, which no Paddle state dict does" in str(err.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not a Paddle checkpoint"):
        load_pretrained_model(tiny_net(1), str(path))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_real_state_dict_and_optimizer_state_still_load(tmp_path, protocol):
    net = tiny_net(1)
    opt = paddle.optimizer.Momentum(parameters=net.parameters(), learning_rate=paddle.optimizer.lr
                                    .PolynomialDecay(0.01, 10))
    net(paddle.rand([1, 3, 8, 8])).mean().backward()
    opt.step()
    opt._learning_rate.step()
    for name, state in (("model.pdparams", net.state_dict()), ("model.pdopt", opt.state_dict())):
        path = str(tmp_path / name)
        paddle.save(state, path, protocol=protocol)
        ours, theirs = safe_load_state_dict(path), paddle.load(path)
        assert ours.keys() == theirs.keys()
        for k, v in theirs.items():
            if isinstance(v, paddle.Tensor):
                assert np.array_equal(ours[k].numpy(), v.numpy()) and ours[k].name == v.name
            else:
                assert ours[k] == v
    assert "LR_Scheduler" in ours


def test_garbage_is_not_a_paddle_checkpoint(tmp_path):
    path = tmp_path / "model.pdparams"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(CheckpointError, match="not a Paddle checkpoint: .*model.pdparams"):
        safe_load_state_dict(str(path))
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        safe_load_state_dict(str(path))


# --- a model built from a PaddleSeg config whose backbone is a URL -----------------------------------

def test_config_with_a_backbone_url_builds_a_pretrained_model(server, seg_home, tmp_path):
    from paddleseg.cvlibs import Config
    from paddleseg.models.backbones import HRNet_W18_Small_V1
    paddle.seed(7)
    source = HRNet_W18_Small_V1()
    url = server.serve("/dygraph/hrnet_w18_small_v1_ssld.tar.gz",
                       weights_tar(source, "hrnet_w18_small_v1_ssld"))
    cfg = tmp_path / "fcn.yml"
    cfg.write_text(f"""model:
  type: FCN
  num_classes: 2
  backbone:
    type: HRNet_W18_Small_V1
    pretrained: {url}
""")
    model = Config(str(cfg)).model
    assert same_weights(model.backbone, source)
    assert (seg_home / "pretrained_model" / "hrnet_w18_small_v1_ssld" / "model.pdparams").is_file()


# --- the optic-disc data set ---------------------------------------------------------------------

def _optic_zip(tmp_path):
    root = make_tiny_optic(tmp_path / "src" / "optic_disc_seg", num_train=2, num_val=1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for folder, _, files in os.walk(root):
            for name in files:
                full = os.path.join(folder, name)
                z.write(full, os.path.relpath(full, os.path.dirname(root)))
    return buf.getvalue()


def test_optic_disc_download_checks_its_sha256(server, seg_home, tmp_path):
    from paddleseg.datasets import OpticDiscSeg
    from paddleseg.datasets.dataset import DatasetError
    from paddleseg.datasets.optic_disc_seg import download_optic_disc
    body = _optic_zip(tmp_path)
    url = server.serve("/dataset/optic_disc_seg.zip", body)
    root = tmp_path / "data" / "optic_disc_seg"
    with pytest.raises(DatasetError, match="expected " + "f" * 64):
        download_optic_disc(str(root), url=url, sha256="f" * 64)
    assert not root.exists() and os.listdir(root.parent) == []
    download_optic_disc(str(root), url=url, sha256=hashlib.sha256(body).hexdigest())
    assert (root / "train_list.txt").is_file()
    assert len(OpticDiscSeg(dataset_root=str(root), mode="train")) == 2


def test_get_optic_disc_falls_back_to_the_synthetic_set_offline(tmp_path, seg_home):
    root = tmp_path / "optic_disc_seg"
    url = f"http://127.0.0.1:{dead_port()}/optic_disc_seg.zip"
    proc = subprocess.run([sys.executable, "tools/get_optic_disc.py", "--dataset_root", str(root),
                           "--url", url, "--num_train", "2", "--num_val", "1", "--size", "64"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"cannot download {url} (Connection refused)" in proc.stderr
    assert "wrote a synthetic optic-disc set" in proc.stdout
    assert (root / "train_list.txt").is_file()
