"""MkDocs hook: the benchmarks' own README and results (``benchmarks/``) become the site's
Benchmarks section, so their figures live in one place, next to the scripts that produce them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files


def on_files(files: Files, config: Any) -> Files:
    root = Path(config["config_file_path"]).parent / "benchmarks"
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix not in {".md", ".png", ".json", ".svg", ".jpg"}:
            continue
        name = (
            "index.md"
            if path.relative_to(root).as_posix() == "README.md"
            else path.relative_to(root).as_posix()
        )
        files.append(File.generated(config, f"benchmarks/{name}", abs_src_path=str(path)))
    return files
