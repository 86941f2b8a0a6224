"""Packaging files: the desktop entry, AppStream metainfo and PyInstaller spec are well formed and agree."""
import ast
import configparser
import xml.etree.ElementTree as ET
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "packaging"
APP_ID = "io.github.latent_canvas.LatentCanvas"


def test_desktop_entry():
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read(PKG / f"{APP_ID}.desktop")
    e = cp["Desktop Entry"]
    assert e["Type"] == "Application" and e["Exec"].split()[0] == "latent-canvas" and e["Icon"] == APP_ID
    assert e["Categories"].endswith(";") and "Graphics" in e["Categories"]


def test_metainfo():
    root = ET.parse(PKG / f"{APP_ID}.metainfo.xml").getroot()
    assert root.tag == "component" and root.get("type") == "desktop-application"
    assert root.findtext("id") == APP_ID
    assert root.find("launchable").text == f"{APP_ID}.desktop"
    assert root.find("provides/binary").text == "latent-canvas"
    assert root.findtext("project_license") and root.find("description/p") is not None


def test_pyinstaller_spec_parses_and_builds_the_app_entry():
    src = (PKG / "latent_canvas.spec").read_text()
    tree = ast.parse(src)
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"Analysis", "PYZ", "EXE", "COLLECT"} <= calls
    assert '"__main__.py"' in src and "exclude_binaries=True" in src


def test_icon_files_exist_and_packaging_refers_to_them():
    icons = PKG.parent / "resources" / "icons"
    svg, png = icons / f"{APP_ID}.svg", icons / f"{APP_ID}.png"
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg") and root.get("viewBox") == "0 0 256 256"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = ET.parse(PKG / f"{APP_ID}.metainfo.xml").getroot()
    assert meta.find("icon").text == APP_ID == svg.stem
    src = (PKG / "latent_canvas.spec").read_text()
    assert f'"{APP_ID}.png"' in src and "icon=str(ICON)" in src
