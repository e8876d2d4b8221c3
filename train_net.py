#!/usr/bin/env python
"""Train or evaluate d2_edwpose models (Keypoint R-CNN + MobileNetV3-FPN + (E)DWConv head).

    python train_net.py --config-file configs/keypoint_rcnn_mv3_fpn_320_edw.yaml --num-gpus 8
    python train_net.py --config-file configs/keypoint_rcnn_mv3_fpn_320_edw.yaml \
        --eval-only MODEL.WEIGHTS output/model_final.pth [TEST.OPTIMIZE_FOR_INFERENCE True]

Same command line as detectron2's tools/train_net.py (--resume, --num-machines,
--machine-rank, --dist-url, trailing KEY VALUE config overrides). Without CUDA, --num-gpus N
starts N CPU processes (gloo backend).
"""
# d2_edwpose first: it installs its detectron2 compatibility hook (d2_edwpose/compat.py) in
# environments set up without the start-up .pth file.
from d2_edwpose.engine import Trainer, check_datasets  # isort: skip
from d2_edwpose.model_zoo import load_config  # isort: skip

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from d2_edwpose.engine.checkpoint import AtomicValidatingCheckpointer
from d2_edwpose.modeling.cpu_inference import optimize_for_inference


def setup(args):
    # The datasets are registered by check_datasets and the Trainer, once the logger below
    # writes what their registration reports to OUTPUT_DIR/log.txt.
    cfg = load_config(args.config_file, args.opts, register_datasets=False)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="d2_edwpose")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        check_datasets(cfg, train=False)
        model = Trainer.build_model(cfg)
        AtomicValidatingCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        if cfg.TEST.OPTIMIZE_FOR_INFERENCE:
            optimize_for_inference(model.eval())
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main():
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
