"""``make demo``: the service end to end on a synthetic shop, as a storefront sees it.

Starts ``recsvc serve`` on the published model (a private Redis, embedded
defaults), then, over gRPC: a known customer's recommendations next to what they
bought; the top item going out of stock in the live catalogue and leaving the next
answer; a merchandising pin and a cap per category; a product launched today answered
for from its category, then listed beside the item shoppers pair it with; an anonymous
visitor who views a few items of one category and sees the recommendations follow,
logs in and links an app; an A/B test splitting the home page's shoppers, with a
purchase attributed to its variant; then a stop and a clean exit.
"""

from __future__ import annotations

import argparse
import csv
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc

from recsvc import artifact as art
from recsvc.client import RecommenderClient, to_json
from recsvc.experiments import Experiment, Variant, experiment_message

_READY = re.compile(r"recsvc serving on (\S+):(\d+)")


def _start(artifacts: Path) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "recsvc", "-q", "serve", "--artifacts", str(artifacts),
           "--port", "0", "--metrics-port", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := _READY.search(line):
            return proc, f"127.0.0.1:{m.group(2)}"
    proc.kill()
    raise SystemExit("the server did not start; run `recsvc serve` to see why")


def _category_of(catalog: Path) -> dict[str, str]:
    with catalog.open(newline="") as fh:
        return {row["item_id"]: row["category"] for row in csv.DictReader(fh)}


def _show(title: str, items: list[dict[str, object]], category: dict[str, str]) -> None:
    print(f"\n{title}")
    for rank, item in enumerate(items, 1):
        iid = str(item["item_id"])
        score = float(str(item["score"]))
        rules = item.get("rule_ids")
        tag = f"  rule {','.join(map(str, rules))}" if isinstance(rules, list) and rules else ""
        where = f"{category.get(iid, '?'):>5}"
        print(f"  {rank:2d}. {iid:<10} {where}  {score:.3f}  {item['reason']}{tag}")


def _answers(client: RecommenderClient, item_id: str) -> bool:
    """Whether SimilarItems answers for ``item_id`` (NOT_FOUND: not yet)."""
    try:
        client.similar([item_id], k=1)
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


def _experiment(client: RecommenderClient, user: str) -> None:
    """An A/B test on the home page: half the shoppers get what sells, for everyone;
    a purchase from a list is attributed to the variant that made it."""
    test = Experiment(
        "demo-ab",
        (Variant("control", 0.5), Variant("popular", 0.5, non_personalized=True)),
        placements=("home",),
    )
    client.set_experiments([experiment_message(test)])
    print("\n... the shop starts an A/B test on home: half the shoppers get what sells")
    while client.recommend(user, k=1, placement="home").experiment != test.name:
        time.sleep(0.01)
    split = Counter(
        client.recommend(f"demo-shopper-{n}", k=1, placement="home").variant for n in range(200)
    )
    print("200 shoppers, by variant: " + ", ".join(f"{v} {n}" for v, n in sorted(split.items())))
    answer = client.recommend(user, k=8, placement="home")
    bought = answer.items[0].item_id
    rid = answer.recommendation_id
    client.record_events(
        [
            client.event(i.item_id, "impression", user_id=user, recommendation_id=rid,
                         placement="home")
            for i in answer.items
        ]
        + [client.event(bought, "purchase", user_id=user, recommendation_id=rid,
                        placement="home", quantity=1, price=20.0)]
    )  # fmt: skip
    print(f"{user} is in '{answer.variant}' (every replica agrees: a hash of the id); "
          f"they buy {bought} from the list: attributed to demo-ab/{answer.variant} "
          "(`recsvc experiment report demo-ab` reads it from the event log)")  # fmt: skip
    other = Counter(
        client.recommend(f"demo-shopper-{n}", k=1, placement="pdp").experiment or "none"
        for n in range(20)
    )
    print(f"the product page is not in the test: experiment {dict(other)}")
    client.set_experiments([])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--catalog", type=Path, default=Path("data/catalog.csv"))
    args = parser.parse_args(argv)

    path = art.resolve(args.artifacts)
    model = art.read_artifact(path)
    category = _category_of(args.catalog)
    # a customer with a real history: the one with the most interactions
    counts = model.user_items.getnnz(axis=1)
    u = int(counts.argmax())
    user = str(model.user_ids[u])
    history = model.user_items[u]
    top_bought = [str(model.item_ids[i]) for i in history.indices[history.data.argsort()[::-1][:5]]]

    proc, target = _start(args.artifacts)
    try:
        with RecommenderClient(target, timeout=5.0) as client:
            info = to_json(client.model_info())
            print(f"server {target}: model {info['model_version']}, {info['item_count']} items, "
                  f"{info['user_count']} users, index {info['index_type']}")  # fmt: skip

            print(f"\nKnown customer {user}: heaviest in their history: "
                  + ", ".join(f"{i} ({category.get(i, '?')})" for i in top_bought))  # fmt: skip
            rec = to_json(client.recommend(user, k=8, placement="home"))
            _show(f"Recommended for {user} (strategy {rec['strategy']}):", rec["items"], category)

            # the shop marks the top item out of stock: the next answer leaves it out
            gone = str(rec["items"][0]["item_id"])
            # an upsert replaces the item's record: send all of it, not only the stock
            gone_path = [category[gone]] if gone in category else []
            client.upsert_items([client.item(gone, available=False, category_path=gone_path)])
            print(f"\n... the shop marks {gone} out of stock (live catalogue, no retraining)")
            started = time.monotonic()
            while gone in [i.item_id for i in client.recommend(user, k=8).items]:
                time.sleep(0.01)
            seconds = time.monotonic() - started
            now = to_json(client.recommend(user, k=8, placement="home"))
            _show(f"Recommended for {user} {seconds * 1000:.0f} ms later:", now["items"], category)
            client.upsert_items([client.item(gone, category_path=gone_path)])
            print(f"\n... {gone} is back in stock")

            # merchandising: a promoted item pinned first on "home", two items per category
            shown = {str(i["item_id"]) for i in now["items"]}
            promo = next(
                str(i) for i in model.item_ids[model.popularity.argsort()] if str(i) not in shown
            )
            client.set_rules(
                [
                    client.rule(
                        "demo-promo", "pin", item_ids=[promo], position=1, placements=["home"]
                    )
                ]
            )
            print(f"\n... the shop pins {promo} first on the home page and caps each category at 2")
            while client.recommend(user, k=8, placement="home").items[0].item_id != promo:
                time.sleep(0.01)
            merch = to_json(client.recommend(user, k=8, placement="home", max_per_category=2))
            applied = ", ".join(merch["applied_rule_ids"])
            title = f"Recommended for {user} on home, rules applied ({applied}):"
            _show(title, merch["items"], category)
            client.delete_rules(["demo-promo"])

            # an anonymous visitor views three items of one category, one at a time
            cat = Counter(category.values()).most_common(3)[-1][0]
            pool = [str(i) for i in model.item_ids[model.popularity.argsort()[::-1]]]
            viewed = [i for i in pool if category.get(i) == cat][5:8]

            # a product launched today: answered for at once, then paired by shoppers
            launched = "NEW-0001"
            category[launched] = cat
            client.upsert_items([client.item(launched, category_path=[cat], title="New")])
            print(f"\n... the shop launches {launched} in {cat} (never sold, not in the model)")
            started = time.monotonic()
            while not _answers(client, launched):
                time.sleep(0.05)
            like = to_json(client.similar([launched], k=5))
            _show(f"Similar to {launched}, {time.monotonic() - started:.1f} s later (from its "
                  "category):", like["items"], category)  # fmt: skip
            partner = viewed[0]
            client.record_events(
                [client.event(i, "view", session_id=f"demo-pair-{n}")
                 for n in range(8) for i in (partner, launched)]
            )  # fmt: skip
            print(f"\n... 8 shoppers view {launched} beside {partner}")
            started = time.monotonic()
            while launched not in [i.item_id for i in client.similar([partner], k=8).items]:
                time.sleep(0.05)
            paired = to_json(client.similar([partner], k=8))
            _show(f"Similar to {partner}, {time.monotonic() - started:.1f} s later:",
                  paired["items"], category)  # fmt: skip
            session = "demo-visitor-session"
            before = to_json(client.recommend(session_id=session, k=8))
            _show("Anonymous visitor, nothing viewed yet (strategy "
                  f"{before['strategy']}):", before["items"], category)  # fmt: skip
            for item in viewed:
                client.record_events([client.event(item, "view", session_id=session)])
                print(f"\n... visitor views {item} ({cat})")
            after = to_json(client.recommend(session_id=session, k=8))
            _show(f"Anonymous visitor after the views (strategy {after['strategy']}):",
                  after["items"], category)  # fmt: skip
            share = sum(category.get(str(i["item_id"])) == cat for i in after["items"])
            print(f"\n{share} of {len(after['items'])} recommendations are now from {cat}, "
                  f"the category the visitor browsed.")  # fmt: skip
            # the visitor logs in: the same session id, now with a new customer id
            joined = to_json(client.recommend("demo-new-customer", session_id=session, k=8))
            print("\n... the visitor logs in as demo-new-customer (same session id)")
            _show(f"demo-new-customer's first answer keeps the visit (strategy "
                  f"{joined['strategy']}):", joined["items"], category)  # fmt: skip
            kept = to_json(client.recommend("demo-new-customer", k=8))
            print(f"\n... and later, without the session id (strategy {kept['strategy']}): "
                  f"{sum(category.get(str(i['item_id'])) == cat for i in kept['items'])} of "
                  f"{len(kept['items'])} from {cat}")  # fmt: skip
            # the customer opens the app: its install id is linked to them
            client.link_ids("demo-new-customer", ["demo-app-install"])
            app = [i.item_id for i in client.recommend("demo-app-install", k=8).items]
            print("\n... demo-new-customer opens the app; its install id demo-app-install "
                  "is linked to them")  # fmt: skip
            same = app == [str(i["item_id"]) for i in kept["items"]]
            print(f"the app's answer is the customer's: {same}")
            client.record_events(
                [client.event(app[0], "not_interested", user_id="demo-app-install")]
            )
            again = [i.item_id for i in client.recommend("demo-new-customer", k=8).items]
            print(f"\n... they tap 'not interested' on {app[0]} in the app; on the web it "
                  f"is gone: {app[0] not in again}")  # fmt: skip
            _experiment(client, user)
    except grpc.RpcError as exc:
        print(f"demo failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        proc.kill()
        return 1
    finally:
        if proc.poll() is None:
            # SIGINT: stop now (SIGTERM drains first, for load balancers; none here)
            proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=30)
    print(f"\nserver stopped cleanly (exit {code})" if code == 0 else f"server exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
