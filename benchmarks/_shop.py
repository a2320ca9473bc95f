"""Synthetic shops with a trained, published model, built once and cached in a workdir.

The serving benchmarks need a catalogue of a given size with real ALS factors and the
FAISS index ``recsvc train`` builds for it. :func:`ensure_shop` makes one:

1. ``training.synth.generate`` with ``n_items`` set (seed 7) -- in-process rather than
   ``recsvc synth`` only because the CLI has no flag for ``out_of_stock_rate``;
2. ``recsvc -q train --events E --catalog C --artifacts <dir>/artifacts --publish`` in
   a child process, exactly as a user runs it (no Redis URL: the benchmark loads the
   user vectors into its own private Redis with ``UserVectorStore.publish``).

The folder name carries the whole config, and ``shop.json`` in it is written last, so a
shop is reused only when it was built completely with the same config; anything else
is rebuilt from scratch.

A cached shop is also rebuilt when the index kind ``recsvc train`` would pick for it
today differs from the one it was trained with (the default changes as the code does).

Only items with at least one event enter the model, so the model's item count is a
little below ``n_items`` (read it from :attr:`Shop.model_items`). The shops are built
with ``out_of_stock_rate`` 0.9 so that ``in_stock_only`` rejects ~90% of candidates,
independently of a user's taste (the availability draw is independent of the events);
no other scenario looks at availability.
"""

# ruff: noqa: PLC0415  (synth is imported only when a shop must be built)

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _env import git_revision

SEED = 7
OUT_OF_STOCK_RATE = 0.9
EVENTS_PER_ITEM = 30
"""Events per catalogue item: 3M events touch ~97% of a 100k catalogue."""
MAX_EVENTS = 20_000_000


def default_events(n_items: int) -> int:
    return min(MAX_EVENTS, EVENTS_PER_ITEM * n_items)


@dataclass(frozen=True)
class ShopConfig:
    n_items: int
    n_events: int
    out_of_stock_rate: float = OUT_OF_STOCK_RATE
    seed: int = SEED

    @property
    def name(self) -> str:
        return (
            f"serving-shop-{self.n_items}items-{self.n_events}ev"
            f"-oos{self.out_of_stock_rate:g}-seed{self.seed}"
        )


@dataclass(frozen=True)
class Shop:
    """A built shop: files, the published artifact and what training reported."""

    config: ShopConfig
    folder: Path
    events: Path
    catalog: Path
    artifacts: Path
    """Artifact root: ``CURRENT`` names :attr:`version`."""
    version: str
    model_items: int
    model_users: int
    index_kind: str
    index_recall: float
    build_seconds: float
    """Synth + train, when it was built (a reused shop reports its first build's)."""
    reused: bool
    built_at_git: str
    """Repository revision that trained it."""

    @property
    def version_dir(self) -> Path:
        return self.artifacts / self.version

    def to_json(self) -> dict[str, Any]:
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        out["config"] = asdict(self.config)
        return out


def _clean_env() -> dict[str, str]:
    """The environment without RECSVC_* so children run on defaults plus their flags."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_")}


def recsvc_bin() -> str:
    return str(Path(sys.executable).parent / "recsvc")


#: Bump when what ``recsvc train`` writes changes (the ranking blend, the neighbour
#: model, the buy-again weights): a cached shop from an older trainer is rebuilt, not
#: measured.
TRAINER_FORMAT = 3


def ensure_shop(n_items: int, workdir: Path, n_events: int | None = None) -> Shop:
    """The shop for ``n_items`` (built once under ``workdir``, then reused)."""
    config = ShopConfig(n_items=n_items, n_events=n_events or default_events(n_items))
    folder = workdir / config.name
    stamp = folder / "shop.json"
    if stamp.exists():
        saved = json.loads(stamp.read_text())
        if (
            saved.get("config") == asdict(config)
            and (folder / saved["version_path"]).is_dir()
            and saved.get("index_kind") == _default_index_kind(saved["model_items"])
            and saved.get("trainer_format") == TRAINER_FORMAT
        ):
            print(f"[shop {n_items:,}] reusing {folder}", flush=True)
            return _shop(config, folder, saved, reused=True)
        if saved.get("config") == asdict(config):
            print(f"[shop {n_items:,}] trainer or index changed: rebuilding", flush=True)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    print(f"[shop {n_items:,}] building {folder} ({config.n_events:,} events) ...", flush=True)
    t = time.perf_counter()
    from recsvc.training.synth import SynthConfig, generate

    events, catalog = folder / "events.csv.gz", folder / "catalog.csv"
    generate(
        SynthConfig(
            n_events=config.n_events,
            n_items=config.n_items,
            seed=config.seed,
            out_of_stock_rate=config.out_of_stock_rate,
        ),
        events,
        catalog,
    )
    artifacts = folder / "artifacts"
    cmd = [recsvc_bin(), "-q", "train", "--events", str(events), "--catalog", str(catalog)]
    cmd += ["--artifacts", str(artifacts), "--publish"]
    log = folder / "train.log"
    with log.open("wb") as out:
        done = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=_clean_env(), check=False
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"recsvc train exited {done.returncode}:\n{tail}")
    version = (artifacts / "CURRENT").read_text().strip()
    from recsvc.artifact import read_manifest

    manifest = read_manifest(artifacts / version)
    saved = {
        "trainer_format": TRAINER_FORMAT,
        "config": asdict(config),
        "version_path": f"artifacts/{version}",
        "version": version,
        "model_items": manifest.data.items,
        "model_users": manifest.data.users,
        "index_kind": manifest.index.kind,
        "index_recall": manifest.index.recall,
        "build_seconds": time.perf_counter() - t,
        "train_command": " ".join(cmd),
        "git": git_revision(),
    }
    stamp.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"[shop {n_items:,}] built in {saved['build_seconds']:.0f}s: {version}", flush=True)
    return _shop(config, folder, saved, reused=False)


def _default_index_kind(n_items: int) -> str:
    """The index kind ``recsvc train`` picks today for ``n_items`` (a cached shop trained
    before that choice changed would measure another index than users get)."""
    from recsvc.config import IndexSettings
    from recsvc.index import choose_kind

    return str(choose_kind(n_items, IndexSettings()))


def _shop(config: ShopConfig, folder: Path, saved: dict[str, Any], *, reused: bool) -> Shop:
    return Shop(
        config=config,
        folder=folder,
        events=folder / "events.csv.gz",
        catalog=folder / "catalog.csv",
        artifacts=folder / "artifacts",
        version=saved["version"],
        model_items=saved["model_items"],
        model_users=saved["model_users"],
        index_kind=saved["index_kind"],
        index_recall=saved["index_recall"],
        build_seconds=saved["build_seconds"],
        reused=reused,
        built_at_git=saved.get("git", "unknown"),
    )
