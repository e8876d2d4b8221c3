"""Generate the synthetic person-keypoint dataset (see d2_edwpose/data/synthetic/).

    python -m d2_edwpose.tools.generate_synthetic_keypoints [--output DIR] [--num-train 800] \
        [--num-val 100] [--seed 0]
"""
import argparse
import logging

from d2_edwpose.data.synthetic import default_root, generate_synthetic_keypoints


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=default_root(), help="dataset root (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(generate_synthetic_keypoints(args.output, args.num_train, args.num_val, args.seed))


if __name__ == "__main__":
    main()
