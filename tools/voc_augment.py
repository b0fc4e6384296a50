"""Add the SBD annotations to Pascal VOC 2012, as PaddleSeg's tools/voc_augment.py does, so that
PascalVOC's mode trainaug (the voc12aug configs) can train: SBD's class masks (dataset/cls/*.mat)
become PNGs in VOC2012/SegmentationClassAug, and ImageSets/Segmentation/aug.txt lists the SBD
images (its train and val) that VOC's trainval does not hold.

    python tools/voc_augment.py --voc_path data/VOCdevkit

SBD (benchmark.tgz, 1.4 GB) is downloaded into $SEG_HOME/dataset/benchmark_RELEASE unless
--sbd_path names an unpacked copy. A killed run given the same command resumes: the masks
already converted are kept (each was written whole).
"""
import os
import sys
from multiprocessing.pool import ThreadPool

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddleseg  # noqa: E402,F401  (import order: cv2 before paddle)
from paddleseg.utils import cli, logger  # noqa: E402
from paddleseg.utils.errors import UserError  # noqa: E402

URL = ("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
       "benchmark.tgz")


def parse_args(argv):
    from paddleseg.utils.download import seg_home
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voc_path", default=os.path.join(seg_home(), "dataset", "VOCdevkit"),
                   help="the VOCdevkit folder (holding VOC2012)")
    p.add_argument("--sbd_path", default=None,
                   help="an unpacked SBD (benchmark_RELEASE, holding dataset/); default: download")
    p.add_argument("--url", default=URL, help="where benchmark.tgz is fetched from (a mirror)")
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1,
                   help="threads converting the masks (PaddleSeg's: processes)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p.parse_args(argv)


def sbd_folder(args):
    """The unpacked SBD: --sbd_path, else $SEG_HOME/dataset/benchmark_RELEASE (downloaded once)."""
    from paddleseg.datasets.fetched import fetch
    from paddleseg.utils.download import seg_home
    path = args.sbd_path or os.path.join(seg_home(), "dataset", "benchmark_RELEASE")
    if not os.path.isdir(path):
        if args.sbd_path:
            raise UserError(f"--sbd_path not found: {path}")
        fetch(args.url, path, what="the SBD folder",
              offline_hint=f"download {args.url} elsewhere, unpack it and pass --sbd_path "
                           "benchmark_RELEASE")
    if not os.path.isdir(os.path.join(path, "dataset", "cls")):
        raise UserError(f"{path} is not SBD's benchmark_RELEASE: it has no dataset/cls folder")
    return path


def read_names(path):
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def aug_names(sbd, voc2012):
    """SBD's train and val images that VOC 2012's trainval does not hold, sorted (PaddleSeg
    writes them in a set's order, which changes between runs)."""
    sbd_names = set(read_names(os.path.join(sbd, "dataset", "train.txt")))
    sbd_names |= set(read_names(os.path.join(sbd, "dataset", "val.txt")))
    trainval = os.path.join(voc2012, "ImageSets", "Segmentation", "trainval.txt")
    if not os.path.isfile(trainval):
        raise UserError(f"{trainval} not found: --voc_path must be a VOCdevkit holding VOC 2012")
    return sorted(sbd_names - set(read_names(trainval)))


def write_list(path, names):
    """aug.txt: written, or left as it is when it already lists the same names; a different one
    is the user's and is not replaced."""
    from paddleseg.utils.fileio import atomic_path
    text = "".join(name + "\n" for name in names)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
        raise UserError(f"{path} exists and lists other images; move it away to make it again")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def convert(job):
    """One SBD class mask (.mat, GTcls.Segmentation) to a PNG of class ids."""
    import numpy as np
    from scipy.io import loadmat   # MAT-file arrays only: nothing in the file is executed
    from paddleseg.utils.image_io import write_image
    mat_path, png_path = job
    mask = loadmat(mat_path)["GTcls"][0]["Segmentation"][0].astype(np.uint8)
    write_image(png_path, mask)


def main(argv):
    args = parse_args(argv)
    from paddleseg.utils.progress import Progress
    if args.num_workers < 1:
        raise UserError("--num_workers must be >= 1")
    voc2012 = os.path.join(args.voc_path, "VOC2012")
    if not os.path.isdir(voc2012):
        raise UserError(f"--voc_path {args.voc_path} holds no VOC2012 folder (download Pascal VOC "
                        "2012 first: PascalVOC fetches it into a missing data/VOCdevkit)")
    sbd = sbd_folder(args)
    names = aug_names(sbd, voc2012)
    cls_dir = os.path.join(sbd, "dataset", "cls")
    save_dir = os.path.join(voc2012, "SegmentationClassAug")
    os.makedirs(save_dir, exist_ok=True)
    jobs = [(os.path.join(cls_dir, name), os.path.join(save_dir, name[:-4] + ".png"))
            for name in sorted(os.listdir(cls_dir)) if name.endswith(".mat")]
    todo = [job for job in jobs if not os.path.isfile(job[1])]
    logger.info(f"{len(jobs)} SBD masks, {len(jobs) - len(todo)} converted already; "
                f"{len(names)} images for aug.txt")
    bar = Progress(len(todo), "convert")
    # threads, not forked processes: a fork of a process that runs threads already (Paddle's,
    # a caller's) can deadlock; decoding and PNG encoding release the GIL for most of the work
    with ThreadPool(min(args.num_workers, max(len(todo), 1))) as pool:
        for done, _ in enumerate(pool.imap_unordered(convert, todo, chunksize=16), 1):
            bar.step(done)
    write_list(os.path.join(voc2012, "ImageSets", "Segmentation", "aug.txt"), names)
    logger.info(f"{save_dir} holds the SBD masks; PascalVOC mode trainaug can train")
    return 0


if __name__ == "__main__":
    cli.run(main)
