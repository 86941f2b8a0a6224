"""The shapes world: procedural training scenes (engine.world.scene), an OpenCV detector (engine.world.detect)
and evaluation metrics (engine.world.metrics); the scene API is re-exported here."""
from engine.world.scene import (COLOURS, EVAL_SEEDS, OBJECT_CLASSES, REGIONS, SEMANTIC_CLASSES, SHAPES, TRAIN_SEEDS,
                                VOCAB, Scene, SceneBatch, batch, parse_caption, render, render_from_labels,
                                render_from_layout)
