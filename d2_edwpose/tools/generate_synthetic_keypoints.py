"""Generate the synthetic person-keypoint dataset, or a clip of synthetic people walking across
each other with their ids (see d2_edwpose/data/synthetic/).

    python -m d2_edwpose.tools.generate_synthetic_keypoints [--output DIR] [--num-train 800] \
        [--num-val 100] [--seed 0]
    python -m d2_edwpose.tools.generate_synthetic_keypoints --clip clip.mp4 [--frames 90] \
        [--size 640 360] [--people 3] [--seed 0]
"""
import argparse
import logging

from d2_edwpose.data.synthetic import default_root, generate_synthetic_clip, generate_synthetic_keypoints


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=default_root(), help="dataset root (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip", metavar="FILE.mp4", help="write a clip (and FILE.json) instead")
    parser.add_argument("--frames", type=int, default=90, help="with --clip")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 360), metavar=("W", "H"), help="with --clip")
    parser.add_argument("--people", type=int, default=3, help="with --clip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.clip:
        video, truth = generate_synthetic_clip(args.clip, args.frames, *args.size, args.people, args.seed)
        print(video, truth)
        return video, truth
    print(generate_synthetic_keypoints(args.output, args.num_train, args.num_val, args.seed))


if __name__ == "__main__":
    main()
