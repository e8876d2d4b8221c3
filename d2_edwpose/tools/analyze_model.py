"""Parameters and FLOPs of Keypoint R-CNN configs, split by part, at the fixed input size.

    python -m d2_edwpose.tools.analyze_model [CONFIG ...] [--stock-r50]

FLOPs are fvcore's count, as detectron2 counts them (one fused multiply-add = one flop), of
one image of INPUT.FIXED_SIZE for the backbone and RPN, and per RoI for the box and keypoint
heads; what each part includes is described in d2_edwpose/modeling/analysis.py.
"""
import argparse
from pathlib import Path

from detectron2 import model_zoo

from d2_edwpose.model_zoo import PAPER_CONFIGS, REALTIME_CONFIG, STOCK_R50_CONFIG
from d2_edwpose.modeling.analysis import analysis_config, analyze


def format_table(rows):
    header = (
        "| model | backbone params / GFLOPs | RPN params / GFLOPs | box head params / MFLOPs per RoI "
        "(GFLOPs at test proposals) | keypoint head params / GFLOPs per RoI | total params |\n"
        "|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['model']} | {r['backbone_params'] / 1e6:.2f} M / {r['backbone_gflops']:.2f} "
        f"| {r['rpn_params'] / 1e6:.2f} M / {r['rpn_gflops']:.2f} "
        f"| {r['box_head_params'] / 1e6:.2f} M / {r['box_head_mflops_per_roi']:.2f} "
        f"({r['box_head_gflops_at_test']:.1f} at {r['test_proposals']}) "
        f"| {r['keypoint_head_params'] / 1e6:.2f} M / {r['keypoint_head_gflops_per_roi']:.3f} "
        f"| {r['total_params'] / 1e6:.2f} M |"
        for r in rows
    ]
    return header + "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("configs", nargs="*", type=Path, default=[*PAPER_CONFIGS, REALTIME_CONFIG])
    parser.add_argument(
        "--stock-r50",
        action="store_true",
        help=f"add detectron2's {STOCK_R50_CONFIG} at the same input",
    )
    args = parser.parse_args(argv)
    rows = [analyze(analysis_config(path), path.stem) for path in args.configs]
    if args.stock_r50:
        cfg = analysis_config(model_zoo.get_config_file(STOCK_R50_CONFIG))
        rows.append(analyze(cfg, f"detectron2 {Path(STOCK_R50_CONFIG).stem} (at 320x320)"))
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
