"""Make sure an optic-disc set exists at --dataset_root: keep one that is there, else download
PaddleSeg's optic_disc_seg.zip, else (offline) write the synthetic set in the same layout."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddleseg  # noqa: E402,F401
from paddleseg.datasets.dataset import DatasetError  # noqa: E402
from paddleseg.datasets.optic_disc_seg import URL, download_optic_disc  # noqa: E402
from paddleseg.utils.image_io import shown  # noqa: E402
from make_synthetic_optic_disc import make_dataset  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset_root", default="data/optic_disc_seg")
    p.add_argument("--offline", action="store_true", help="skip the download, go synthetic")
    p.add_argument("--url", default=URL, help="where optic_disc_seg.zip is fetched from (a mirror)")
    p.add_argument("--sha256", default=None,
                   help="required SHA-256 of optic_disc_seg.zip (default: $SEG_OPTIC_DISC_SHA256; "
                        "none is published, so unset means the digest is only logged)")
    p.add_argument("--num_train", type=int, default=60)
    p.add_argument("--num_val", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    args = p.parse_args()
    if os.path.isfile(os.path.join(args.dataset_root, "train_list.txt")):
        print(f"using the optic-disc set at {shown(args.dataset_root)}")
        return
    if not args.offline:
        try:
            download_optic_disc(args.dataset_root, url=args.url, sha256=args.sha256)
            print(f"downloaded the real optic_disc_seg to {shown(args.dataset_root)}")
            return
        except DatasetError as e:
            print(f"{shown(e)}\n-> writing the synthetic set instead", file=sys.stderr)
    make_dataset(args.dataset_root, num_train=args.num_train, num_val=args.num_val, size=args.size)
    print(f"wrote a synthetic optic-disc set to {shown(args.dataset_root)}")


if __name__ == "__main__":
    main()
