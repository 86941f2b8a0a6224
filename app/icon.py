"""The application icon: an SVG drawn for the project, with a PNG render for platforms without SVG icons."""
from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPixmap

APP_ID = "io.github.latent_canvas.LatentCanvas"


def icons_dir() -> Path:
    """resources/icons beside the app package (a PyInstaller bundle keeps the same layout under sys._MEIPASS)."""
    root = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parents[1]))
    return root / "resources" / "icons"


def icon_paths() -> tuple[Path, Path]:
    return icons_dir() / f"{APP_ID}.svg", icons_dir() / f"{APP_ID}.png"


def render_svg(svg: Path, size: int) -> QImage:
    """Rasterize the SVG to a size×size ARGB image (QtSvg)."""
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg} is not a valid SVG")
    img = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    img.fill(Qt.GlobalColor.transparent)
    p = QPainter(img)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(p)
    p.end()
    return img


def app_icon() -> QIcon:
    """The window icon: the SVG at every size Qt asks for, the PNG as a fallback; an empty icon if both are missing."""
    svg, png = icon_paths()
    icon = QIcon()
    if svg.exists():
        icon.addFile(str(svg))
    if png.exists():
        icon.addFile(str(png))
    return icon


def swatch(rgb: tuple[int, int, int], size: int = 24) -> QIcon:
    """A square of one colour with a grey border (the colour brush's colour on the toolbar)."""
    img = QImage(size, size, QImage.Format.Format_RGB32)
    img.fill(QColor(128, 128, 128))
    p = QPainter(img)
    p.fillRect(2, 2, size - 4, size - 4, QColor(*rgb))
    p.end()
    return QIcon(QPixmap.fromImage(img))


def main() -> None:
    """Regenerate the PNG render: python -m app.icon"""
    from PySide6.QtGui import QGuiApplication

    _app = QGuiApplication.instance() or QGuiApplication([])
    svg, png = icon_paths()
    if not render_svg(svg, 256).save(str(png)):
        raise SystemExit(f"cannot write {png}")
    print(png)


if __name__ == "__main__":
    main()
