"""`python -m app` and the `latent-canvas` entry point."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback


def parse_args(argv):
    p = argparse.ArgumentParser(prog="latent-canvas", description="A desktop canvas for Latent Diffusion Models")
    p.add_argument("files", nargs="*", help="an image or .lcproj project to open")
    p.add_argument("--fake-engine", action="store_true", default=bool(os.environ.get("LATENT_CANVAS_FAKE_ENGINE")),
                   help="use a synthetic runner instead of the diffusion engine (demos, tests)")
    p.add_argument("--screenshot", metavar="PNG", help="generate once, save the window, quit")
    p.add_argument("--prompt", default="a red circle above a blue square on grass")
    p.add_argument("--size", type=int, default=0, help="canvas size for --screenshot (default: keep)")
    p.add_argument("--steps", type=int, default=12, help="steps for --screenshot")
    p.add_argument("--labels", metavar="PNG", help="for --screenshot: a label map (pixel values = class ids) to paint")
    p.add_argument("--live", action="store_true", help="for --screenshot: switch Live on instead of generating once")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--engine"]:  # the packaged app has no `python -m engine`: its own binary runs the engine CLI
        from engine.__main__ import main as engine_main

        return engine_main(argv[1:])
    args = parse_args(argv)
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app import project
    from app.main_window import MainWindow

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("Latent Canvas")
    app.setOrganizationName("latent-canvas")
    app.setDesktopFileName("io.github.latent_canvas.LatentCanvas")
    runner = None
    if args.fake_engine:
        from app.demo import fake_runner

        runner = fake_runner
    win = MainWindow(runner=runner, recovery=None if args.screenshot else project.Recovery())

    def hook(kind, value, tb):
        traceback.print_exception(kind, value, tb)
        win.report_error("Unexpected error", f"{kind.__name__}: {value}", "".join(traceback.format_exception(kind, value, tb)))

    sys.excepthook = hook
    win.show()
    QTimer.singleShot(0, win.bridge.engine.preload)
    for path in args.files:
        win.open_path(path)
    if args.screenshot:
        _screenshot_run(win, args, QTimer)
    else:
        QTimer.singleShot(0, win.offer_recovery)
    return app.exec()


def _screenshot_run(win, args, QTimer) -> None:
    """Fill the prompt (and a label map), generate (or switch Live on), grab the window once the result shows, save,
    quit."""
    if args.size:
        win.doc.resize(args.size, args.size)
        win.doc.undo_stack.clear()
    if args.labels:
        from PIL import Image

        import numpy as np

        win.doc.set_labels(np.asarray(Image.open(args.labels)))
        win.tool_actions["semantic"].trigger()
    win.doc.set_param("prompt", args.prompt)
    win.doc.set_param("steps", args.steps)
    win.doc.set_param("seed_mode", "fixed")
    win.doc.set_param("seed", 7)
    win._sync_all()

    def done(_ev=None):
        QTimer.singleShot(400, save)

    def save():
        win.grab().save(args.screenshot)
        r = win.canvas.image_rect()
        top_left = win.canvas.mapTo(win, r.topLeft().toPoint())
        meta = dict(canvas_image_rect=[top_left.x(), top_left.y(), round(r.width()), round(r.height())],
                    image_size=[win.doc.width, win.doc.height], seed=7, error=win.last_error,
                    status=win.statusBar().currentMessage())
        if args.live:
            view, pix = win.live.panel.view, win.live.panel.view.pixmap()
            c = view.mapTo(win, view.rect().center())
            meta["live_rect"] = [c.x() - pix.width() // 2, c.y() - pix.height() // 2, pix.width(), pix.height()]
        with open(args.screenshot + ".json", "w") as f:
            json.dump(meta, f)
        win.doc.mark_clean()
        win.close()

    win.bridge.result.connect(done)
    win.bridge.failed.connect(done)
    QTimer.singleShot(300, (lambda: win.set_live(True)) if args.live else win.generate)


if __name__ == "__main__":
    sys.exit(main())
