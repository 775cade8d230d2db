"""MkDocs hook: the API page of the top-level modules lists every module and package of ``multiad_monai`` that has
no page of its own, so that a module added later appears in the reference without editing the page."""

from __future__ import annotations

from pathlib import Path

MARKER = "<!-- every other module -->"


def on_page_markdown(markdown, page, config, files):
    if MARKER not in markdown:
        return markdown
    root = Path(config["config_file_path"]).parent
    own_pages = {Path(f.src_uri).stem for f in files if f.src_uri.startswith("api/")}
    names = sorted(
        path.stem
        for path in (root / "multiad_monai").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    )
    blocks = [f"::: multiad_monai.{name}" for name in names if name not in own_pages]
    return markdown.replace(MARKER, "\n\n".join(blocks))
