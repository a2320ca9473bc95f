"""The ``recsvc`` command: one console script, one subcommand per job.

Settings come from ``--config FILE``, then ``RECSVC_*`` environment variables,
then the flags of the subcommand (see :mod:`recsvc.config`). Errors recsvc
expects (bad data, bad settings, a refused publish) print one line and exit with a
non-zero status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsvc.errors import ConfigError, RecsvcError

__all__ = ["main"]

log = logging.getLogger("recsvc")

Handler = Callable[[argparse.Namespace], int]


def _interactive() -> bool:
    return sys.stderr.isatty()


# --- settings from flags ------------------------------------------------------------


def _add_settings_flags(p: argparse.ArgumentParser, *, als: bool = True) -> None:
    g = p.add_argument_group("settings (override --config and RECSVC_* variables)")
    g.add_argument("--artifacts", type=Path, help="artifact root directory (default: artifacts)")
    g.add_argument("--redis-url", help="Redis URL for user vectors (redis://, rediss://, unix://)")
    if not als:
        return
    g.add_argument("--factors", type=int, help="ALS latent factors")
    g.add_argument("--regularization", type=float, help="ALS L2 regularization")
    g.add_argument("--alpha", type=float, help="confidence scale: C = 1 + alpha * weight")
    g.add_argument("--iterations", type=int, help="ALS iterations")
    g.add_argument("--random-state", type=int, help="seed of the initial factors")
    g.add_argument("--half-life-days", type=float, help="time-decay half-life (0 = off)")
    g.add_argument(
        "--index", choices=["auto", "exact", "normscan", "hnsw", "ivf"], help="item index kind"
    )


def _settings(args: argparse.Namespace) -> Any:
    from recsvc.config import load_settings

    def get(name: str) -> Any:
        return getattr(args, name, None)

    return load_settings(
        args.config,
        artifact_root=get("artifacts"),
        redis={"url": get("redis_url")},
        als={
            "factors": get("factors"),
            "regularization": get("regularization"),
            "alpha": get("alpha"),
            "iterations": get("iterations"),
            "random_state": get("random_state"),
        },
        weighting={"half_life_days": get("half_life_days")},
        index={"kind": get("index")},
        server={
            "host": get("host"),
            "port": get("port"),
            "metrics_port": get("metrics_port"),
            "processes": get("processes"),
        },
    )


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


def _data_spec(args: argparse.Namespace) -> Any:
    from training.loading import ColumnMapping
    from training.pipeline import DataSpec

    mapping = ColumnMapping.parse(args.columns) if args.columns else None
    return DataSpec(
        events=tuple(args.events),
        format=args.format,
        mapping=mapping,
        catalog=args.catalog,
        skip_bad_rows=args.skip_bad_rows,
    )


# --- subcommands --------------------------------------------------------------------


def _cmd_synth(args: argparse.Namespace) -> int:
    from training.synth import SynthConfig, generate

    catalog = args.catalog or args.events.with_name("catalog.csv")
    config = SynthConfig(
        n_events=args.n_events,
        n_items=args.n_items,
        n_users=args.n_users,
        repeat_rate=args.repeat_rate,
        seed=args.seed,
    )
    summary = generate(config, args.events, catalog, progress=_interactive())
    print(
        f"wrote {summary.n_events:,} events ({summary.n_purchases:,} purchases, "
        f"{summary.n_users:,} users, {summary.n_items:,} items) to {summary.events_path} "
        f"and the catalogue to {summary.catalog_path} in {summary.seconds:.1f}s"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from training.pipeline import train
    from training.publish import publish

    settings = _settings(args)
    result = train(_data_spec(args), settings, progress=_interactive())
    m = result.artifact.manifest
    print(
        f"trained {result.artifact.model_version}: {m['data']['users']:,} users, "
        f"{m['data']['items']:,} items, {m['data']['interactions']:,} interactions; "
        f"index {m['index']['kind']} (recall@{m['index']['recall_k']} {m['index']['recall']:.4f}); "
        f"repeat share {m['ranking']['repeat_share']:.3f} -> {m['ranking']['repeat_policy']}; "
        f"blend {_blend_text(m['ranking']['user_blend'])}"
    )
    print(f"artifact: {result.path}")
    if args.publish:
        published = publish(settings, result.artifact.model_version, progress=_interactive())
        print(f"published {published.version} ({published.vectors_written:,} vectors to Redis)")
    return 0


def _blend_text(blend: dict[str, float]) -> str:
    return " ".join(f"{name} {weight:.2f}" for name, weight in blend.items() if weight)


def _cmd_publish(args: argparse.Namespace) -> int:
    from training.publish import publish, rollback

    settings = _settings(args)
    if args.rollback:
        result = rollback(settings, progress=_interactive())
        print(f"rolled back from {result.previous} to {result.version}")
    else:
        result = publish(settings, args.version, progress=_interactive())
        print(
            f"published {result.version} (was {result.previous or 'nothing'}; "
            f"{result.vectors_written:,} vectors to Redis)"
        )
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from recsvc import artifact as art

    settings = _settings(args)
    root = settings.artifact_root
    current = art.current_version(root)
    versions = art.list_versions(root)
    if not versions:
        print(f"no models under {root}")
        return 0
    for name in versions:
        m = art.read_manifest(root / name)
        mark = "*" if name == current else " "
        print(
            f"{mark} {name}  users={m['data']['users']:,} items={m['data']['items']:,} "
            f"cutoff={m['data']['cutoff']} index={m['index']['kind']}"
        )
    return 0


def _parse_date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date: {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    protocol = args.protocol or ("time" if args.cutoff is not None else "last-basket")
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


def _evaluate_holdout(protocol: str, args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from training.evaluation import evaluate, format_table, split_by_cutoff, split_last_basket
    from training.pipeline import load_data

    data = load_data(_data_spec(args), settings)
    if protocol == "time":
        split = split_by_cutoff(data.table, args.cutoff)
    else:
        split = split_last_basket(data.table)
    dataset = args.dataset or args.events[0].name
    report = evaluate(data, split, settings, dataset=dataset, progress=_interactive())
    print(f"{dataset}: {report.protocol}, {report.users:,} test users")
    print(format_table(report.metrics))
    return report.to_json()


def _evaluate_public(protocol: str, args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from training.evaluation import format_table

    report: dict[str, Any]
    if protocol == "session":
        from training.session_protocol import evaluate_sessions, load_session_dataset

        table, cases = load_session_dataset(args.data)
        report = evaluate_sessions(
            table, cases, settings, dataset=args.dataset or args.data.name, limit=args.limit
        )
        print(f"{report['dataset']}: {report['protocol']}, {report['cases']:,} cases")
    else:
        from training.nbr import evaluate_nbr, load_nbr_dir

        nbr = evaluate_nbr(
            load_nbr_dir(args.data),
            settings,
            seeds=tuple(range(args.seeds)),
            dataset=args.dataset or args.data.name,
        )
        report = nbr.to_json()
        print(f"{nbr.dataset}: {nbr.protocol}, seeds {list(nbr.seeds)}")
    print(format_table(report["metrics"]))
    return report


def _cmd_tune(args: argparse.Namespace) -> int:
    from training import tuning

    settings = _settings(args)
    protocol = args.protocol or ("time" if args.cutoff is not None else "last-basket")
    objective: tuning.Objective
    if protocol == "session":
        from training.session_protocol import load_session_dataset, validation_cases

        if args.data is None:
            raise ConfigError("--protocol session needs --data DIR")
        table, _ = load_session_dataset(args.data)  # the test cases are never read
        train, cases = validation_cases(table, settings.evaluation.validation_share)
        objective = tuning.SessionObjective(train, cases, settings)
    elif protocol == "nbr":
        from training.nbr import load_nbr_dir

        if args.data is None:
            raise ConfigError("--protocol nbr needs --data DIR")
        objective = tuning.NBRObjective(load_nbr_dir(args.data))
    else:
        from training.pipeline import load_data

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


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving.server import run

    settings = _settings(args)
    server = settings.server
    return run(settings, processes=server.processes, event_loop=server.event_loop)


def _client(args: argparse.Namespace) -> Any:
    import grpc

    from recsvc.client import RecommenderClient

    credentials = None
    if args.ca or args.cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=args.ca.read_bytes() if args.ca else None,
            private_key=args.key.read_bytes() if args.key else None,
            certificate_chain=args.cert.read_bytes() if args.cert else None,
        )
    return RecommenderClient(
        args.target, timeout=args.timeout, token=args.token, credentials=credentials
    )


def _print(response: Any, as_json: bool) -> None:
    from recsvc.client import to_json

    data = to_json(response)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    items = data.pop("items", None)
    for key, value in data.items():
        if value not in ("", [], {}, None, False):
            print(f"{key}: {value}")
    for rank, item in enumerate(items or [], 1):
        print(f"{rank:3d}. {item['item_id']:<24} {item['score']:.4f}  {item['reason']}")


def _rpc(args: argparse.Namespace, call: Callable[[Any], Any]) -> int:
    import grpc

    with _client(args) as client:
        try:
            response = call(client)
        except grpc.RpcError as exc:
            print(f"recsvc {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    _print(response, args.json)
    return 0


def _split(text: str | None) -> list[str]:
    return [x for x in (text or "").split(",") if x]


def _cmd_recommend(args: argparse.Namespace) -> int:
    return _rpc(
        args,
        lambda c: c.recommend(
            args.user or "",
            k=args.k,
            session_id=args.session or "",
            session_items=_split(args.session_items),
            exclude_item_ids=_split(args.exclude),
            include_categories=_split(args.categories),
            in_stock_only=args.in_stock,
            non_personalized=args.non_personalized,
            placement=args.placement or "",
        ),
    )


def _cmd_similar(args: argparse.Namespace) -> int:
    return _rpc(
        args, lambda c: c.similar(_split(args.items), k=args.k, in_stock_only=args.in_stock)
    )


def _cmd_events(args: argparse.Namespace) -> int:
    def call(c: Any) -> Any:
        events = [
            c.event(item, args.type, user_id=args.user or "", session_id=args.session or "")
            for item in _split(args.items)
        ]
        return c.record_events(events)

    return _rpc(args, call)


def _cmd_forget(args: argparse.Namespace) -> int:
    return _rpc(args, lambda c: c.forget_user(args.user))


def _cmd_info(args: argparse.Namespace) -> int:
    return _rpc(args, lambda c: c.model_info())


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
    _add_settings_flags(p)
    p.add_argument(
        "--cutoff", type=_parse_date, help="time: events at/after this date are the test"
    )
    p.add_argument(
        "--holdout",
        choices=["last-basket"],
        help="same as --protocol last-basket (kept for scripts)",
    )
    p.add_argument("--data", type=Path, help="nbr/session: folder of the public dataset")


def _add_client_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--target", default="127.0.0.1:50051", help="server HOST:PORT")
    g.add_argument("--timeout", type=float, default=2.0, help="deadline per call, seconds")
    g.add_argument("--token", help="bearer token (for RecordEvents/ForgetUser when required)")
    g.add_argument("--json", action="store_true", help="print the response as JSON")
    g.add_argument("--ca", type=Path, help="PEM CA bundle: connect with TLS, trusting it")
    g.add_argument("--cert", type=Path, help="PEM client certificate (mutual TLS)")
    g.add_argument("--key", type=Path, help="PEM private key of --cert")


# --- parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsvc",
        description="Real-time product recommendations: train ALS + FAISS models, publish, serve.",
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (see config.example.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="generate a synthetic shop (events + catalogue)")
    p.add_argument("--events", type=Path, required=True, help="output events CSV (.gz to compress)")
    p.add_argument(
        "--catalog", type=Path, help="output catalogue CSV (default: catalog.csv beside)"
    )
    p.add_argument("--n-events", type=int, default=100_000, help="rows to write (1k to 50M)")
    p.add_argument("--n-items", type=int, help="catalogue size (default: from --n-events)")
    p.add_argument("--n-users", type=int, help="users (default: from --n-events)")
    p.add_argument("--repeat-rate", type=float, default=0.3, help="share of repeat purchases")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=_cmd_synth)

    p = sub.add_parser("train", help="fit ALS on purchase history and write a model artifact")
    _add_data_flags(p)
    _add_settings_flags(p)
    p.add_argument("--publish", action="store_true", help="publish the new version after training")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="score the served ranking and baselines on held-out data (see docs/quality.md)",
    )
    _add_protocol_flags(p)
    p.add_argument("--seeds", type=int, default=5, help="nbr: random user splits to average")
    p.add_argument("--limit", type=int, help="session: score only the first N test cases")
    p.add_argument("--report", type=Path, help="write the report as JSON here")
    p.add_argument("--dataset", help="dataset name in the report (default: file or folder name)")
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser(
        "tune",
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
    p.set_defaults(handler=_cmd_tune)

    p = sub.add_parser(
        "publish",
        help="make a trained version current (vectors into Redis first), or roll back",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", help="version to publish (default: newest trained)")
    which.add_argument(
        "--rollback", action="store_true", help="return to the previously published version"
    )
    _add_settings_flags(p, als=False)
    p.set_defaults(handler=_cmd_publish)

    p = sub.add_parser("models", help="list trained versions (* = current)")
    _add_settings_flags(p, als=False)
    p.set_defaults(handler=_cmd_models)

    p = sub.add_parser(
        "serve", help="run the gRPC server (health, reflection, /metrics) on the current model"
    )
    _add_settings_flags(p, als=False)
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument("--metrics-port", type=int, help="HTTP /metrics port (default 9464)")
    p.add_argument("--processes", type=int, help="server processes sharing the port (default 1)")
    p.set_defaults(handler=_cmd_serve)

    p = sub.add_parser("recommend", help="ask a running server for recommendations")
    _add_client_flags(p)
    p.add_argument("--user", help="customer id (omit for an anonymous visitor)")
    p.add_argument("--session", help="session id")
    p.add_argument(
        "--session-items", metavar="A,B,C", help="items viewed in this session, oldest first"
    )
    p.add_argument("--k", type=int, default=10, help="how many items")
    p.add_argument("--exclude", metavar="A,B", help="item ids never to return")
    p.add_argument("--categories", metavar="C1,C2", help="only items of these categories")
    p.add_argument("--in-stock", action="store_true", help="only items in stock")
    p.add_argument("--non-personalized", action="store_true", help="consent off: no profile used")
    p.add_argument("--placement", help="where the list is shown (metrics label)")
    p.set_defaults(handler=_cmd_recommend)

    p = sub.add_parser("similar", help="items similar to given items")
    _add_client_flags(p)
    p.add_argument("--items", required=True, metavar="A,B", help="item ids")
    p.add_argument("--k", type=int, default=10, help="how many items")
    p.add_argument("--in-stock", action="store_true", help="only items in stock")
    p.set_defaults(handler=_cmd_similar)

    p = sub.add_parser("events", help="record live events (view, add_to_cart, purchase, ...)")
    _add_client_flags(p)
    p.add_argument("--items", required=True, metavar="A,B", help="item ids, one event each")
    p.add_argument(
        "--type",
        default="view",
        choices=["view", "add_to_cart", "purchase", "impression", "click"],
        help="event type",
    )
    p.add_argument("--user", help="customer id")
    p.add_argument("--session", help="session id")
    p.set_defaults(handler=_cmd_events)

    p = sub.add_parser("forget", help="erase a user (ForgetUser)")
    _add_client_flags(p)
    p.add_argument("--user", required=True, help="customer id to erase")
    p.set_defaults(handler=_cmd_forget)

    p = sub.add_parser("info", help="what model the server serves (GetModelInfo)")
    _add_client_flags(p)
    p.set_defaults(handler=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(max(level, logging.WARNING))  # CPU-feature probing noise
    handler: Handler = args.handler
    try:
        return handler(args)
    except RecsvcError as exc:
        print(f"recsvc {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"recsvc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
