"""The ``recsvc`` command: one console script, one subcommand per job.

The command sits above the roles without importing them: the shared core defines
the client's subcommands (``recommend``, ``similar``, ``events``, ``forget``,
``info``) and ``models``; each role adds its own through the ``recsvc.commands``
entry-point group (``recsvc.training.commands``: ``synth``, ``train``,
``evaluate``, ``tune``, ``publish``; ``recsvc.serving.commands``: ``serve``). A
client-only install lists every subcommand; one whose role's dependencies are not
installed says which extra brings them.

Settings come from ``--config FILE``, then ``RECSVC_*`` environment variables,
then the flags of the subcommand (see :mod:`recsvc.config`). Errors recsvc
expects (bad data, bad settings, a refused publish) print one line and exit with a
non-zero status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsvc import __version__
from recsvc.errors import RecsvcError

if TYPE_CHECKING:
    from recsvc.config import Settings

__all__ = [
    "COMMAND_GROUP",
    "Handler",
    "add_client_flags",
    "add_settings_flags",
    "build_parser",
    "interactive",
    "main",
    "rpc",
    "settings_from_args",
]

log = logging.getLogger("recsvc")

COMMAND_GROUP = "recsvc.commands"
"""Entry-point group of the roles' subcommands: each entry is a function that takes
the subparsers action and adds its parsers (``handler`` and ``extra`` defaults)."""

Handler = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse._SubParsersAction, private in typeshed


def interactive() -> bool:
    """Whether progress bars are worth drawing (stderr is a terminal)."""
    return sys.stderr.isatty()


# --- settings from flags ------------------------------------------------------------


def _common_flags() -> argparse.ArgumentParser:
    """``--config``, ``-v``, ``-q``: accepted before the subcommand and after it
    (``recsvc train --config tuned.toml`` as well as ``recsvc --config tuned.toml
    train``). They default to absent (SUPPRESS), so a subparser does not reset what the
    main parser read; read them with ``getattr(args, name, default)``. (The parsers
    share these action objects: ``set_defaults`` on one would change them for all.)"""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML settings file (see config.example.toml)",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="warnings and errors only",
    )
    return common


def add_settings_flags(p: argparse.ArgumentParser, *, als: bool = True) -> None:
    """The flags that override settings: artifact root and Redis URL, and (``als``)
    the fit's parameters under implicit's names."""
    g = p.add_argument_group("settings (override --config and RECSVC_* variables)")
    g.add_argument("--artifacts", type=Path, help="artifact root directory (default: artifacts)")
    g.add_argument(
        "--redis-url",
        help="Redis URL for user vectors and live state (redis://, rediss://, unix://; "
        "redis+cluster://host:port,... for a Redis Cluster)",
    )
    if not als:
        return
    g.add_argument("--factors", type=int, help="ALS latent factors")
    g.add_argument("--regularization", type=float, help="ALS L2 regularization")
    g.add_argument("--alpha", type=float, help="confidence scale: C = 1 + alpha * weight")
    g.add_argument("--iterations", type=int, help="ALS iterations")
    g.add_argument("--random-state", type=int, help="seed of the initial factors")
    g.add_argument("--half-life-days", type=float, help="time-decay half-life (0 = off)")
    g.add_argument(
        "--engine",
        choices=["implicit", "spark"],
        help="what fits ALS: implicit here, or Spark MLlib (the spark extra and Java)",
    )
    g.add_argument("--spark-master", help="Spark master URL for --engine spark (local[*])")
    g.add_argument(
        "--index", choices=["auto", "exact", "normscan", "hnsw", "ivf"], help="item index kind"
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings of this run: ``--config``, environment, then the flags given."""
    from recsvc.config import load_settings

    def get(name: str) -> Any:
        return getattr(args, name, None)

    return load_settings(
        get("config"),
        artifact_root=get("artifacts"),
        redis={"url": get("redis_url")},
        als={
            "factors": get("factors"),
            "regularization": get("regularization"),
            "alpha": get("alpha"),
            "iterations": get("iterations"),
            "random_state": get("random_state"),
            "engine": get("engine"),
            "spark_master": get("spark_master"),
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


# --- the core's subcommands: the artifact root and the client -----------------------


def _cmd_models(args: argparse.Namespace) -> int:
    from recsvc import artifact as art

    root = settings_from_args(args).artifact_root
    current = art.current_version(root)
    versions = art.list_versions(root)
    if not versions:
        print(f"no models under {root}")
        return 0
    for name in versions:
        m = art.read_manifest(root / name)
        mark = "*" if name == current else " "
        print(
            f"{mark} {name}  users={m.data.users:,} items={m.data.items:,} "
            f"cutoff={m.data.cutoff.isoformat()} index={m.index.kind}"
        )
    return 0


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
        rules = item.get("rule_ids") or []
        tag = f"  rules {','.join(rules)}" if rules else ""
        if item.get("because_item_id"):
            tag += f"  because {item['because_item_id']}"
        print(f"{rank:3d}. {item['item_id']:<24} {item['score']:.4f}  {item['reason']}{tag}")


def rpc(
    args: argparse.Namespace,
    call: Callable[[Any], Any],
    show: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Call the server with the client of ``args`` and print the answer (as JSON with
    ``--json``, through ``show`` if given); one line and status 1 for an error status."""
    import grpc

    with _client(args) as client:
        try:
            response = call(client)
        except grpc.RpcError as exc:
            print(f"recsvc {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if show is not None:
        from recsvc.client import to_json

        show(to_json(response))
    else:
        _print(response, args.json)
    return 0


def _split(text: str | None) -> list[str]:
    return [x for x in (text or "").split(",") if x]


def _cmd_recommend(args: argparse.Namespace) -> int:
    return rpc(
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
            max_per_category=args.max_per_category,
            explain=args.explain,
            paged=args.paged,
            continuation=args.continuation or "",
            variant=args.variant or "",
        ),
    )


def _cmd_similar(args: argparse.Namespace) -> int:
    return rpc(
        args,
        lambda c: c.similar(
            _split(args.items),
            k=args.k,
            in_stock_only=args.in_stock,
            placement=args.placement or "",
            max_per_category=args.max_per_category,
            mode=args.mode.replace("-", "_") if args.mode else "",
        ),
    )


def _cmd_events(args: argparse.Namespace) -> int:
    def call(c: Any) -> Any:
        events = [
            c.event(
                item,
                args.type,
                user_id=args.user or "",
                session_id=args.session or "",
                recommendation_id=args.recommendation_id or "",
                placement=args.placement or "",
                quantity=args.quantity,
                price=args.price,
            )
            for item in _split(args.items)
        ]
        return c.record_events(events)

    return rpc(args, call)


def _cmd_consent(args: argparse.Namespace) -> int:
    return rpc(args, lambda c: c.set_consent(args.user, args.consent))


def _cmd_link(args: argparse.Namespace) -> int:
    if args.unlink:
        return rpc(args, lambda c: c.unlink_ids(args.customer, args.ids))
    return rpc(args, lambda c: c.link_ids(args.customer, args.ids))


def _cmd_export_user(args: argparse.Namespace) -> int:
    import grpc

    with _client(args) as client:
        try:
            document = client.export_user(args.user)
        except grpc.RpcError as exc:
            print(f"recsvc {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    # a JSON document already: printed as JSON, with or without --json
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    if args.status:
        from recsvc.compaction import erasure_status
        from recsvc.pseudonyms import pseudonyms_from

        settings = settings_from_args(args)
        pseudonyms = pseudonyms_from(settings)
        user = args.user if pseudonyms is None else pseudonyms(args.user)
        print(erasure_status(settings.erasure_path, user))
        return 0
    return rpc(args, lambda c: c.forget_user(args.user))


def _cmd_info(args: argparse.Namespace) -> int:
    return rpc(args, lambda c: c.model_info())


def _cmd_rules(args: argparse.Namespace) -> int:
    if args.rules_command == "load":
        from recsvc.rulefile import read_rules

        rules = read_rules(args.file)
        return rpc(args, lambda c: c.set_rules(rules, replace_all=args.replace))
    if args.rules_command == "delete":
        return rpc(args, lambda c: c.delete_rules(args.ids))
    if args.json:
        return rpc(args, lambda c: c.list_rules())
    return rpc(args, lambda c: c.list_rules(), show=_show_rules)


def _show_rules(data: dict[str, Any]) -> None:
    print(f"rules_version: {data.get('rules_version', 0)}")
    for r in data.get("rules", []):
        parts = [f"items {','.join(r['item_ids'])}"] if r.get("item_ids") else []
        if r.get("categories"):
            parts.append(f"categories {','.join(r['categories'])}")
        for a in r.get("attributes", []):
            if "values" in a:
                parts.append(f"{a['name']} in {','.join(a['values'].get('values', []))}")
            else:
                bounds = a.get("range", {})
                parts.append(f"{a['name']} {bounds.get('min', '')}..{bounds.get('max', '')}")
        target = "; ".join(parts)
        how = f"position {r.get('position')}" if r["action"] == "pin" else f"weight {r['weight']}"
        where = ",".join(r.get("placements", [])) or "every placement"
        window = f" {r.get('starts_at', '…')} to {r.get('ends_at', '…')}" * bool(
            r.get("starts_at") or r.get("ends_at")
        )
        print(f"{r['rule_id']}: {r['action']} {target}, {how}, {where}{window}")


def add_client_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a subcommand that talks to a running server."""
    g = p.add_argument_group("connection")
    g.add_argument("--target", default="127.0.0.1:50051", help="server HOST:PORT")
    g.add_argument("--timeout", type=float, default=2.0, help="deadline per call, seconds")
    g.add_argument("--token", help="bearer token (for RecordEvents/ForgetUser when required)")
    g.add_argument("--json", action="store_true", help="print the response as JSON")
    g.add_argument("--ca", type=Path, help="PEM CA bundle: connect with TLS, trusting it")
    g.add_argument("--cert", type=Path, help="PEM client certificate (mutual TLS)")
    g.add_argument("--key", type=Path, help="PEM private key of --cert")


def _add_core_commands(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    from recsvc.events import EventType

    p = sub.add_parser("models", parents=[common], help="list trained versions (* = current)")
    add_settings_flags(p, als=False)
    p.set_defaults(handler=_cmd_models, extra="serve")

    p = sub.add_parser(
        "recommend", parents=[common], help="ask a running server for recommendations"
    )
    add_client_flags(p)
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
    p.add_argument("--placement", help="where the list is shown (metrics, rules, settings)")
    p.add_argument(
        "--max-per-category", type=int, default=0, metavar="N", help="diversity: N per category"
    )
    p.add_argument(
        "--explain", action="store_true", help="name the shopper's item that led to each one"
    )
    p.add_argument(
        "--paged", action="store_true", help="start a paging sequence (prints a continuation)"
    )
    p.add_argument(
        "--continuation", metavar="TOKEN", help="the next page of a sequence (show more)"
    )
    p.add_argument("--variant", help="QA: answer as this variant of the placement's experiment")
    p.set_defaults(handler=_cmd_recommend)

    p = sub.add_parser(
        "similar", parents=[common], help="items similar to given items, or bought with them"
    )
    add_client_flags(p)
    p.add_argument("--items", required=True, metavar="A,B", help="item ids (a product, a cart)")
    p.add_argument(
        "--mode",
        choices=("similar", "bought-together"),
        help="similar items, or items bought with the given ones (default: the placement's)",
    )
    p.add_argument("--k", type=int, default=10, help="how many items")
    p.add_argument("--in-stock", action="store_true", help="only items in stock")
    p.add_argument("--placement", help="where the list is shown (metrics, rules, settings)")
    p.add_argument(
        "--max-per-category", type=int, default=0, metavar="N", help="diversity: N per category"
    )
    p.set_defaults(handler=_cmd_similar)

    p = sub.add_parser(
        "events", parents=[common], help="record live events (view, add_to_cart, purchase, ...)"
    )
    add_client_flags(p)
    p.add_argument("--items", required=True, metavar="A,B", help="item ids, one event each")
    p.add_argument(
        "--type", default="view", choices=[t.value for t in EventType], help="event type"
    )
    p.add_argument("--user", help="customer id")
    p.add_argument("--session", help="session id")
    p.add_argument(
        "--recommendation-id", metavar="ID", help="the answer the items were shown in (attribution)"
    )
    p.add_argument("--placement", help="where that answer was shown")
    p.add_argument("--quantity", type=float, default=0.0, help="units (purchase, add to cart)")
    p.add_argument("--price", type=float, help="a purchase's unit price (revenue attribution)")
    p.set_defaults(handler=_cmd_events)

    p = sub.add_parser(
        "forget",
        parents=[common],
        help="erase a user (ForgetUser), or say where an erasure stands",
        description="Erase a customer through a running server (ForgetUser). With "
        "--status, read the erasure list and its completion record instead (where the "
        "artifact root is mounted) and print none, pending (erased; the event log or a "
        "model version still holds them until the next compaction) or complete.",
    )
    add_client_flags(p)
    p.add_argument("--user", required=True, help="customer id to erase")
    p.add_argument(
        "--status",
        action="store_true",
        help="print the erasure's status (none, pending, complete) from the files",
    )
    add_settings_flags(p, als=False)
    p.set_defaults(handler=_cmd_forget, extra="serve")  # --status reads the artifacts

    p = sub.add_parser(
        "consent",
        parents=[common],
        help="store a customer's consent to personalisation (SetConsent)",
        description="Store a customer's consent, honoured by every replica from the next "
        "call: full (the default), session_only (this visit only: no history kept) or "
        "off (no personalisation). session_only and off delete the stored profile at once.",
    )
    add_client_flags(p)
    p.add_argument("--user", required=True, help="customer id")
    p.add_argument("consent", choices=["full", "session_only", "off"], help="what they consent to")
    p.set_defaults(handler=_cmd_consent)

    p = sub.add_parser(
        "link",
        parents=[common],
        help="link a customer's other ids to them (LinkIds, UnlinkIds)",
        description="Link external ids of one customer (device id, loyalty card, hashed "
        "e-mail, app id) to their customer id: every replica then reads and writes the "
        "customer's state for them, and forget/export-user of any covers all. A newly "
        "linked id's own history joins the customer's. --unlink takes ids back. Needs "
        "the token.",
    )
    add_client_flags(p)
    p.add_argument("--customer", required=True, help="the customer id the ids stand for")
    p.add_argument("ids", nargs="+", help="the ids to link (or unlink)")
    p.add_argument("--unlink", action="store_true", help="unlink the ids instead (UnlinkIds)")
    p.set_defaults(handler=_cmd_link)

    p = sub.add_parser(
        "export-user",
        parents=[common],
        help="everything held about a customer, as JSON (ExportUser)",
        description="Print everything the service holds about a customer as one JSON "
        "document (the right of access): the state store's keys of theirs and of every "
        "id linked to them, decoded, whether they are erased, the server's event-log "
        "rows naming them, and the model versions trained with them. Needs the token.",
    )
    add_client_flags(p)
    p.add_argument("--user", required=True, help="customer id")
    p.set_defaults(handler=_cmd_export_user)

    p = sub.add_parser("info", parents=[common], help="what model the server serves")
    add_client_flags(p)
    p.set_defaults(handler=_cmd_info)

    p = sub.add_parser(
        "rules",
        parents=[common],
        help="merchandising rules of a running server: load, list, delete",
    )
    actions = p.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    q = actions.add_parser(
        "load", parents=[common], help="set the rules of a TOML file ([[rule]] tables)"
    )
    q.add_argument("file", type=Path, help="rules file (see docs/api.md, Merchandising rules)")
    q.add_argument(
        "--replace", action="store_true", help="delete every rule not in the file, in one change"
    )
    add_client_flags(q)
    q = actions.add_parser("list", parents=[common], help="the rules the server applies")
    add_client_flags(q)
    q = actions.add_parser("delete", parents=[common], help="delete rules by id")
    q.add_argument("ids", nargs="+", metavar="RULE_ID")
    add_client_flags(q)
    p.set_defaults(handler=_cmd_rules)


# --- parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand: the roles' (from the ``recsvc.commands`` entry points) first,
    then the core's."""
    common = _common_flags()
    parser = argparse.ArgumentParser(
        prog="recsvc",
        description="Real-time product recommendations: train ALS + FAISS models, publish, serve.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"recsvc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load()(sub, common)
    _add_core_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``recsvc``; the exit status.

    A reader that closes the pipe early (``recsvc models | head -1``) ends the run
    quietly with status 141, 128 + SIGPIPE: what a shell reports for ``cat``, ``grep``
    or ``git`` cut off the same way (they die of the signal), so scripts that check
    pipelines treat recsvc as they treat them; 0 would claim that all was written.
    Python ignores SIGPIPE (restoring its default would also kill the process on a
    socket's EPIPE), so the write raises BrokenPipeError instead.
    """
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not as a traceback at exit
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a pipe of its own (a socket, a subprocess): not the reader's doing
        # Python flushes stdout again at exit: point it at /dev/null first
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll says POLLERR)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a stream without one
        return False
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poll.poll(0))


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # --config, -v and -q default to absent (argparse.SUPPRESS): see _common_flags
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(max(level, logging.WARNING))  # CPU-feature probing noise
    handler: Handler = args.handler
    try:
        return handler(args)
    except RecsvcError as exc:
        print(f"recsvc {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        extra = getattr(args, "extra", None)
        if extra is None or exc.name is None or exc.name.startswith("recsvc"):
            raise
        print(
            f"recsvc {args.command}: error: needs {exc.name}, which this install lacks: "
            f"pip install 'recsvc[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"recsvc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
