"""The training role's subcommands of ``recsvc``: ``synth``, ``train``, ``evaluate``,
``tune`` and ``publish`` (registered through the ``recsvc.commands`` entry point).

Handlers import their heavy dependencies (pyarrow, implicit, faiss) only when run,
so ``recsvc --help`` stays fast and works on a client-only install.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsvc.cli import add_client_flags, add_settings_flags, interactive, rpc, settings_from_args
from recsvc.errors import ConfigError, DataError

if TYPE_CHECKING:
    from recsvc.config import Settings
    from recsvc.manifest import BlendWeights

    from .pipeline import DataSpec

__all__ = ["add_commands"]

log = logging.getLogger(__name__)

EXTRA = "train"
"""The install extra that brings this role's dependencies."""


def _add_data_flags(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_argument_group("input data")
    g.add_argument(
        "--events",
        type=Path,
        action="append",
        required=required,
        help="events file: CSV, CSV.gz or Parquet (repeat for several, e.g. event logs)",
    )
    g.add_argument(
        "--format",
        choices=["events", "online-retail"],
        default="events",
        help="layout: canonical events (default) or UCI Online Retail II",
    )
    g.add_argument(
        "--columns",
        metavar="MAP",
        help="column mapping for other layouts, e.g. user_id=Customer,item_id=SKU,timestamp=ts",
    )
    g.add_argument(
        "--catalog", type=Path, help="catalogue CSV/Parquet: item_id, category, available"
    )
    g.add_argument(
        "--skip-bad-rows", action="store_true", help="drop and count bad rows instead of stopping"
    )
    g.add_argument(
        "--live-catalog",
        action="store_true",
        help="read the live catalogue from --redis-url: its categories and stock win over "
        "--catalog's, withdrawn items' events are dropped",
    )


def _add_event_log_flag(p: argparse.ArgumentParser) -> None:
    """``--event-log DIR`` (repeatable): the servers' event-log directories a command
    reads or cleans (``args.event_log``; None: ``[server] event_log_dir``)."""
    p.add_argument(
        "--event-log",
        type=Path,
        action="append",
        metavar="DIR",
        help="an event-log directory (repeat for each replica's; default: [server] event_log_dir)",
    )


def _add_force_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="publish even if the publish gate's quality checks refuse the model (index "
        "recall, holdout metrics; never a bad checksum); recorded in the artifact root's "
        "publish_log.jsonl",
    )


def _data_spec(args: argparse.Namespace) -> DataSpec:
    from .loading import ColumnMapping
    from .pipeline import DataSpec

    mapping = ColumnMapping.parse(args.columns) if args.columns else None
    return DataSpec(
        events=tuple(args.events or ()),
        format=args.format,
        mapping=mapping,
        catalog=args.catalog,
        skip_bad_rows=args.skip_bad_rows,
        live_catalog=args.live_catalog,
    )


# --- subcommands --------------------------------------------------------------------


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import SynthConfig, generate

    catalog = args.catalog or args.events.with_name("catalog.csv")
    config = SynthConfig(
        n_events=args.n_events,
        n_items=args.n_items,
        n_users=args.n_users,
        repeat_rate=args.repeat_rate,
        seed=args.seed,
    )
    summary = generate(config, args.events, catalog, progress=interactive())
    print(
        f"wrote {summary.n_events:,} events ({summary.n_purchases:,} purchases, "
        f"{summary.n_users:,} users, {summary.n_items:,} items) to {summary.events_path} "
        f"and the catalogue to {summary.catalog_path} in {summary.seconds:.1f}s"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import train
    from .publish import publish

    settings = settings_from_args(args)
    if args.force and not args.publish:
        raise ConfigError("--force goes with --publish")
    result = train(_data_spec(args), settings, progress=interactive())
    m = result.artifact.manifest
    print(
        f"trained {m.model_version}: {m.data.users:,} users, "
        f"{m.data.items:,} items, {m.data.interactions:,} interactions; "
        f"index {m.index.kind} (recall@{m.index.recall_k} {m.index.recall:.4f}); "
        f"repeat share {m.ranking.repeat_share:.3f} -> {m.ranking.repeat_policy.value}; "
        f"blend {_blend_text(m.ranking.user_blend)}"
    )
    print(f"artifact: {result.path}")
    if args.publish:
        published = publish(
            settings, result.artifact.model_version, progress=interactive(), force=args.force
        )
        print(f"published {published.version} ({published.vectors_written:,} vectors to Redis)")
        _print_gate(published.forced, published.notes)
    return 0


def _print_gate(forced: str | None, notes: tuple[str, ...] = ()) -> None:
    """What the publish gate let through: a refusal --force overrode, and what it could
    not judge (also logged, and recorded in the artifact root's publish_log.jsonl)."""
    if forced:
        print(f"  forced past the publish gate: {forced}")
    for note in notes:
        print(f"  publish gate: {note}")


def _blend_text(blend: BlendWeights) -> str:
    return " ".join(f"{name} {weight:.2f}" for name, weight in blend.model_dump().items() if weight)


def _cmd_publish(args: argparse.Namespace) -> int:
    from .publish import publish, rollback

    settings = settings_from_args(args)
    if args.rollback:
        if args.force:
            raise ConfigError("--force overrides the publish gate; a rollback passes none")
        result = rollback(settings, progress=interactive())
        print(f"rolled back from {result.previous} to {result.version}")
    else:
        result = publish(settings, args.version, progress=interactive(), force=args.force)
        print(
            f"published {result.version} (was {result.previous or 'nothing'}; "
            f"{result.vectors_written:,} vectors to Redis)"
        )
        _print_gate(result.forced, result.notes)
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from recsvc import artifact as art
    from recsvc.objectstore import ObjectStoreModels

    settings = settings_from_args(args)
    root = settings.artifact_root
    version = args.version or art.current_version(root)
    if version is None:
        raise ConfigError(f"nothing is published under {root}: name a --version to push")
    sent = ObjectStoreModels(args.to).push(root, version, publish=not args.no_publish)
    where = "" if args.no_publish else f"; its CURRENT names {version}"
    print(f"pushed {version} to {args.to} ({sent:,} bytes){where}")
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    from recsvc.compaction import CompactionBusy, compact

    settings = settings_from_args(args)
    dirs = args.event_log or [settings.event_log_path]
    try:
        report = compact(settings.artifact_root, settings.erasure_path, dirs)
    except CompactionBusy as exc:
        print(f"recsvc compact: {exc}; try again later", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
        return 0 if not report.pending else 1
    print(
        f"{len(report.completed)} erased customers complete, {len(report.pending)} pending; "
        f"{report.rows_removed:,} rows removed from {report.files_rewritten} event-log files, "
        f"{report.users_removed} from {report.versions_rewritten} model versions "
        f"({report.seconds:.1f} s)"
    )
    for path in report.skipped_files:
        print(f"  in use, left for the server's own round: {path}")
    return 0 if not report.pending else 1


def _cmd_gc(args: argparse.Namespace) -> int:
    from recsvc.compaction import CompactionBusy
    from recsvc.retention import collect

    settings = settings_from_args(args)
    dirs = args.event_log or [settings.event_log_path]
    try:
        report = collect(settings.retention, settings.artifact_root, dirs, dry_run=args.dry_run)
    except CompactionBusy as exc:
        print(f"recsvc gc: {exc}; try again later", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{verb} {len(report.event_log_files)} event-log files and "
        f"{len(report.versions)} model versions; {len(report.kept_versions)} versions kept"
    )
    for path in [*report.event_log_files, *report.versions]:
        print(f"  {path}")
    for path in report.in_use:
        print(f"  expired but in use by a server, left: {path}")
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .retrain import RetrainBusy, retrain

    settings = settings_from_args(args)
    if args.force and args.every:
        raise ConfigError("--force overrides the publish gate for one run, not with --every")
    spec = _data_spec(args)
    dirs = args.event_log or [settings.event_log_path]
    stop = threading.Event()
    if args.every:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    while True:
        try:
            report = retrain(spec, settings, dirs, progress=interactive(), force=args.force)
        except RetrainBusy as exc:
            print(f"recsvc retrain: {exc}; not started", file=sys.stderr)
            if not args.every:
                return 1
        except Exception as exc:
            if not args.every:
                raise
            log.warning("retrain failed (the served model is unchanged): %s", exc)
        else:
            print(
                f"published {report.version} (was {report.previous or 'nothing'}): "
                f"{report.events:,} events incl. {report.event_log_files} event-log files, "
                f"{report.vectors_written:,} vectors to Redis, {report.seconds:.0f} s; "
                f"retention removed {len(report.deleted_versions)} versions",
                flush=True,
            )
            _print_gate(report.forced)
        if not args.every or stop.wait(args.every):
            return 0


def _parse_date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date: {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _protocol(args: argparse.Namespace) -> str:
    return str(
        args.protocol or args.holdout or ("time" if args.cutoff is not None else "last-basket")
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    protocol = _protocol(args)
    if protocol in ("nbr", "session"):
        if args.data is None:
            raise ConfigError(f"--protocol {protocol} needs --data DIR (the dataset's folder)")
        report = _evaluate_public(protocol, args, settings)
    else:
        if not args.events:
            raise ConfigError(f"--protocol {protocol} needs --events FILE")
        if protocol == "time" and args.cutoff is None:
            raise ConfigError("--protocol time needs --cutoff DATE")
        report = _evaluate_holdout(protocol, args, settings)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.report}")
    return 0


def _evaluate_holdout(
    protocol: str, args: argparse.Namespace, settings: Settings
) -> dict[str, Any]:
    from .evaluation import evaluate, format_table, split_by_cutoff, split_last_basket
    from .pipeline import load_data

    data = load_data(_data_spec(args), settings)
    if protocol == "time":
        split = split_by_cutoff(data.table, args.cutoff)
    else:
        split = split_last_basket(data.table)
    dataset = args.dataset or args.events[0].name
    report = evaluate(
        data, split, settings, dataset=dataset, progress=interactive(), strong=args.strong
    )
    print(f"{dataset}: {report.protocol}, {report.users:,} test users")
    print(format_table(report.metrics))
    return report.to_json()


def _evaluate_public(protocol: str, args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from .evaluation import format_table

    report: dict[str, Any]
    if protocol == "session":
        from .nextclick import evaluate_next_click, load_next_click_data

        table, cases = load_next_click_data(args.data)
        report = evaluate_next_click(
            table, cases, settings, dataset=args.dataset or args.data.name, limit=args.limit
        )
        print(f"{report['dataset']}: {report['protocol']}, {report['cases']:,} cases")
    else:
        from .nextbasket import evaluate_nbr, load_nbr_dir

        nbr = evaluate_nbr(
            load_nbr_dir(args.data),
            settings,
            seeds=tuple(range(args.seeds)),
            dataset=args.dataset or args.data.name,
            strong=args.strong,
        )
        report = nbr.to_json()
        print(f"{nbr.dataset}: {nbr.protocol}, seeds {list(nbr.seeds)}")
    print(format_table(report["metrics"]))
    return report


def _cmd_tune(args: argparse.Namespace) -> int:
    from . import tuning

    settings = settings_from_args(args)
    protocol = _protocol(args)
    objective: tuning.Objective
    if protocol == "session":
        from .nextclick import load_next_click_data, validation_cases

        if args.data is None:
            raise ConfigError("--protocol session needs --data DIR")
        table, _ = load_next_click_data(args.data)  # the test cases are never read
        train, cases = validation_cases(table, settings.evaluation.validation_share)
        objective = tuning.SessionObjective(train, cases, settings)
    elif protocol == "nbr":
        from .nextbasket import load_nbr_dir

        if args.data is None:
            raise ConfigError("--protocol nbr needs --data DIR")
        objective = tuning.NBRObjective(load_nbr_dir(args.data))
    else:
        from .pipeline import load_data

        if not args.events:
            raise ConfigError(f"--protocol {protocol} needs --events FILE")
        data = load_data(_data_spec(args), settings)
        share = settings.evaluation.validation_share
        split = tuning.validation_split(data.table, protocol, share, args.cutoff)
        objective = tuning.HoldoutObjective(data, split, name=f"{protocol} validation")
    result = tuning.tune(
        objective, settings, budget_seconds=args.budget, seed=args.seed, progress=print
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(tuning.tuned_toml(result))
    best = result.best
    print(
        f"best {result.metric} {best.score:.4f} (given settings {result.baseline.score:.4f}) "
        f"after {len(result.trials)} fits in {result.seconds:.0f} s -> {args.out}"
    )
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        print(f"report: {args.report}")
    return 0


def _add_protocol_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--protocol",
        choices=["time", "last-basket", "nbr", "session"],
        help="time: split at --cutoff; last-basket: each user's last basket; nbr: the "
        "next-basket reality-check protocol on --data (Ta-Feng layout); session: next click "
        "of anonymous session prefixes on --data (SR-GNN Diginetica layout). Default: time "
        "with --cutoff, else last-basket",
    )
    _add_data_flags(p, required=False)
    add_settings_flags(p)
    p.add_argument(
        "--cutoff", type=_parse_date, help="time: events at/after this date are the test"
    )
    p.add_argument(
        "--holdout",
        choices=["last-basket"],
        help="same as --protocol last-basket (kept for scripts)",
    )
    p.add_argument("--data", type=Path, help="nbr/session: folder of the public dataset")


def _cmd_catalog_load(args: argparse.Namespace) -> int:
    from .catalog_sync import catalog_messages, read_catalog_file

    catalog = read_catalog_file(args.file, skip_bad_rows=args.skip_bad_rows)
    batches = list(catalog_messages(catalog, separator=args.separator))
    sent = 0

    def send(client: Any) -> Any:
        nonlocal sent
        answer = None
        for batch in batches:
            answer = client.upsert_items(batch)
            sent += len(batch)
            if interactive():
                print(f"\r{sent:,} items", end="", file=sys.stderr, flush=True)
        return answer

    status = rpc(args, send)
    if status == 0:
        print(f"loaded {sent:,} items from {args.file} ({catalog.skipped_rows} rows skipped)")
    return status


def _cmd_catalog_withdraw(args: argparse.Namespace) -> int:
    ids = [i for i in args.items.split(",") if i]
    return rpc(args, lambda c: c.withdraw_items(ids))


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the training subcommands to ``sub`` (the ``recsvc`` subparsers)."""
    p = sub.add_parser(
        "synth", parents=[common], help="generate a synthetic shop (events + catalogue)"
    )
    p.add_argument("--events", type=Path, required=True, help="output events CSV (.gz to compress)")
    p.add_argument(
        "--catalog", type=Path, help="output catalogue CSV (default: catalog.csv beside)"
    )
    p.add_argument("--n-events", type=int, default=100_000, help="rows to write (1k to 50M)")
    p.add_argument("--n-items", type=int, help="catalogue size (default: from --n-events)")
    p.add_argument("--n-users", type=int, help="users (default: from --n-events)")
    p.add_argument("--repeat-rate", type=float, default=0.3, help="share of repeat purchases")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=_cmd_synth, extra=EXTRA)

    p = sub.add_parser(
        "train", parents=[common], help="fit ALS on purchase history and write a model artifact"
    )
    _add_data_flags(p)
    add_settings_flags(p)
    p.add_argument("--publish", action="store_true", help="publish the new version after training")
    _add_force_flag(p)
    p.set_defaults(handler=_cmd_train, extra=EXTRA)

    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="score the served ranking and baselines on held-out data (see docs/quality.md)",
    )
    _add_protocol_flags(p)
    p.add_argument("--seeds", type=int, default=5, help="nbr: random user splits to average")
    p.add_argument("--limit", type=int, help="session: score only the first N test cases")
    p.add_argument("--report", type=Path, help="write the report as JSON here")
    p.add_argument("--dataset", help="dataset name in the report (default: file or folder name)")
    p.add_argument(
        "--strong-baselines",
        dest="strong",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time, last-basket and nbr: also EASE, RP3beta and TIFU-KNN, each tuned on a "
        "validation split of the training data (training/strong_baselines.py; minutes on "
        "Ta-Feng)",
    )
    p.set_defaults(handler=_cmd_evaluate, extra=EXTRA)

    p = sub.add_parser(
        "tune",
        parents=[common],
        help="search ALS parameters and the ranking blend on a validation split, "
        "write the best as a config file",
    )
    _add_protocol_flags(p)
    p.add_argument(
        "--budget", type=float, default=600.0, help="seconds to search (the first fit always runs)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random search")
    p.add_argument(
        "--out", type=Path, default=Path("tuned.toml"), help="config file to write (TOML)"
    )
    p.add_argument("--report", type=Path, help="write every trial as JSON here")
    p.set_defaults(handler=_cmd_tune, extra=EXTRA)

    p = sub.add_parser(
        "publish",
        parents=[common],
        help="make a trained version current (vectors into Redis first), or roll back",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", help="version to publish (default: newest trained)")
    which.add_argument(
        "--rollback", action="store_true", help="return to the previously published version"
    )
    _add_force_flag(p)
    add_settings_flags(p, als=False)
    p.set_defaults(handler=_cmd_publish, extra=EXTRA)

    p = sub.add_parser(
        "push",
        parents=[common],
        help="upload a model version to an object store that servers mirror",
        description="Upload a version of the artifact root (default: the published one) "
        "to an object store (s3://bucket/prefix, any fsspec URL; the object-store extra), "
        "checksums verified first, its manifest last, then point the store's CURRENT at "
        "it: servers with [server] artifact_url set to the same URL mirror and load it "
        "within [server] reload_poll_seconds. Credentials and endpoint come from the "
        "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL).",
    )
    p.add_argument("--to", required=True, help="object-store URL, e.g. s3://bucket/shop")
    p.add_argument("--version", help="version to push (default: the published one)")
    p.add_argument(
        "--no-publish", action="store_true", help="upload only; leave the store's CURRENT"
    )
    add_settings_flags(p, als=False)
    p.set_defaults(handler=_cmd_push, extra=EXTRA)

    p = sub.add_parser(
        "compact",
        parents=[common],
        help="remove erased customers from the event log and every kept model version",
        description="Erasure that deletes: rewrite every event-log file and model version "
        "that still holds a customer on the erasure list without them (each file replaced "
        "atomically; safe to interrupt and rerun), and record them complete. A file a "
        "server is appending to is left for that server's own round (exit status 1 while "
        "any customer stays pending). Servers run this every "
        "[server] compact_interval_seconds.",
    )
    _add_event_log_flag(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_settings_flags(p, als=False)
    p.set_defaults(handler=_cmd_compact, extra=EXTRA)

    p = sub.add_parser(
        "retrain",
        parents=[common],
        help="train on the base data and the servers' event logs, publish, apply retention",
        description="The retraining loop: the base data (--events, optional) plus every "
        "event-log file of --event-log (each replica's directory, or a shared one; default "
        "[server] event_log_dir), erased and expired rows dropped, trained, published "
        "through the quality gate, then [retention] applied. A failed run publishes "
        "nothing. Runs never overlap (a lock in the artifact root). --every SECONDS "
        "repeats it until SIGTERM: the scheduler.",
    )
    _add_data_flags(p, required=False)
    _add_event_log_flag(p)
    p.add_argument(
        "--every", type=float, metavar="SECONDS", help="run again every SECONDS (scheduler)"
    )
    _add_force_flag(p)
    add_settings_flags(p)
    p.set_defaults(handler=_cmd_retrain, extra=EXTRA)

    p = sub.add_parser(
        "gc",
        parents=[common],
        help="delete event-log files and model versions past the [retention] limits",
        description="Apply [retention]: delete event-log files not appended to for "
        "event_log_days, and model versions beyond the newest keep_versions that are "
        "older than keep_days (never CURRENT or the rollback target). Servers do it every "
        "[server] compact_interval_seconds.",
    )
    _add_event_log_flag(p)
    p.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_settings_flags(p, als=False)
    p.set_defaults(handler=_cmd_gc, extra=EXTRA)

    p = sub.add_parser(
        "catalog", parents=[common], help="the live catalogue of a running server: load, withdraw"
    )
    catalog = p.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    q = catalog.add_parser(
        "load",
        parents=[common],
        help="add or replace the items of a catalogue file (CSV/Parquet), 1000 per call",
    )
    q.add_argument("file", type=Path, help="item_id, category, available, title, price, ...")
    q.add_argument("--separator", default=">", help="between category levels (default '>')")
    q.add_argument(
        "--skip-bad-rows", action="store_true", help="drop and count bad rows instead of stopping"
    )
    add_client_flags(q)
    q.set_defaults(handler=_cmd_catalog_load, extra=EXTRA, command="catalog load")
    q = catalog.add_parser(
        "withdraw", parents=[common], help="withdraw items (no RPC returns them)"
    )
    q.add_argument("--items", required=True, metavar="A,B", help="item ids")
    add_client_flags(q)
    q.set_defaults(handler=_cmd_catalog_withdraw, command="catalog withdraw")

    p = sub.add_parser(
        "experiment",
        parents=[common],
        help="A/B experiments: set or list a running server's, report one from the event log",
    )
    experiment = p.add_subparsers(dest="experiment_command", required=True, metavar="ACTION")
    q = experiment.add_parser(
        "set",
        parents=[common],
        help="make the experiments of a TOML file ([[experiment]] tables) the whole set",
    )
    q.add_argument("file", type=Path, help="experiments file (see docs/experiments.md)")
    add_client_flags(q)
    q.set_defaults(handler=_cmd_experiment_set, command="experiment set")
    q = experiment.add_parser(
        "list", parents=[common], help="the running experiments and their models' memory"
    )
    add_client_flags(q)
    q.set_defaults(handler=_cmd_experiment_list, command="experiment list")
    q = experiment.add_parser(
        "report",
        parents=[common],
        help="CTR, conversion and revenue per variant with always-valid confidence intervals",
    )
    q.add_argument("name", help="the experiment")
    add_settings_flags(q, als=False)
    _add_event_log_flag(q)
    q.add_argument("--control", help="the variant the others are compared with (default: first)")
    q.add_argument(
        "--error-rate",
        type=float,
        default=0.05,
        metavar="ALPHA",
        help="false-positive rate of the test, peeking included (default 0.05)",
    )
    q.add_argument("--since", type=_parse_date, help="only events from this date (YYYY-MM-DD)")
    q.add_argument("--until", type=_parse_date, help="only events before this date")
    q.add_argument("--plot", type=Path, metavar="PNG", help="also plot the metrics over time")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(handler=_cmd_experiment_report, extra=EXTRA, command="experiment report")


def _cmd_experiment_set(args: argparse.Namespace) -> int:
    from recsvc.experiments import experiment_message, read_experiments

    messages = [experiment_message(e) for e in read_experiments(args.file)]
    return rpc(args, lambda c: c.set_experiments(messages))


def _cmd_experiment_list(args: argparse.Namespace) -> int:
    if args.json:
        return rpc(args, lambda c: c.list_experiments())
    return rpc(args, lambda c: c.list_experiments(), show=_show_experiments)


def _show_experiments(data: dict[str, Any]) -> None:
    print(f"experiments_version: {data.get('experiments_version', 0)}")
    loaded = {v: int(n) for v, n in data.get("model_bytes", {}).items()}
    for e in data.get("experiments", []):
        where = ", ".join(e.get("placements", [])) or "every placement"
        arms = []
        for v in e.get("variants", []):
            model = v.get("model_version")
            what = [f"model {model} (+{loaded.get(model, 0) / 2**20:.1f} MiB)" if model
                    else "the published model"]  # fmt: skip
            what += ["popularity only"] * bool(v.get("non_personalized"))
            what += ["no rules"] * bool(v.get("without_rules"))
            what += [f"{k} {v[k]}" for k in ("rotate_after", "trending_weight") if k in v]
            arms.append(f"{v['name']} {float(v['share']):.0%}: {', '.join(what)}")
        salt = f", salt {e['salt']}" if e.get("salt") else ""
        print(f"{e['name']} ({where}{salt})")
        for arm in arms:
            print(f"  {arm}")


def _declared_control(settings: Settings, name: str) -> str | None:
    """The first variant of experiment ``name`` in ``[server] experiments_file``, if
    the file declares it (the log alone does not say which variant came first)."""
    from recsvc.experiments import read_experiments

    path = settings.server.experiments_file
    if path is None or not path.is_file():
        return None
    try:
        declared = {e.name: e for e in read_experiments(path)}
    except DataError:
        return None
    found = declared.get(name)
    return found.control.name if found is not None and found.variants else None


def _cmd_experiment_report(args: argparse.Namespace) -> int:
    from .experiment_report import format_text, plot, report

    settings = settings_from_args(args)
    dirs = args.event_log or [settings.event_log_path]
    result = report(
        dirs,
        args.name,
        control=args.control or _declared_control(settings, args.name),
        alpha=args.error_rate,
        since=args.since.timestamp() if args.since else None,
        until=args.until.timestamp() if args.until else None,
    )
    if args.plot is not None:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2, default=str))
    else:
        print(format_text(result))
        if args.plot is not None:
            print(f"plot: {args.plot}")
    return 0
