"""The shapes world: procedural training scenes (scene), an OpenCV detector (detect) and evaluation metrics (metrics)."""
from engine.world.detect import Detection, detect, segment
from engine.world.metrics import box_iou, caption_match, inpaint_score, layout_score, pixel_accuracy, psnr
from engine.world.scene import (COLOURS, EVAL_SEEDS, OBJECT_CLASSES, REGIONS, SEMANTIC_CLASSES, SHAPES, TRAIN_SEEDS,
                                VOCAB, Scene, SceneBatch, batch, parse_caption, render, render_from_labels,
                                render_from_layout)
