"""A storefront backend's calls to recsvc, with nothing but the client installed.

``pip install recsvc`` brings what this needs (the typed client and the generated
messages); it type-checks under ``mypy --strict``. Against a running server::

    python examples/storefront.py --target localhost:50051 --user u0042

It asks what the shopper should see next and then reports the items as shown
(impressions carry the answer's ``recommendation_id``, so clicks can be attributed
to the list and the model that made it).
"""

from __future__ import annotations

import argparse

from recsvc.client import RecommenderClient
from recsvc.v1 import recommender_pb2 as pb

PLACEMENT = "home"


def next_items(client: RecommenderClient, user_id: str, k: int) -> pb.RecommendResponse:
    """The shopper's next ``k`` items for the home page."""
    return client.recommend(user_id, k=k, placement=PLACEMENT)


def report_shown(client: RecommenderClient, user_id: str, shown: pb.RecommendResponse) -> int:
    """One impression per item shown; returns how many the server accepted."""
    events = [
        client.event(
            item.item_id,
            "impression",
            user_id=user_id,
            recommendation_id=shown.recommendation_id,
            placement=PLACEMENT,
        )
        for item in shown.items
    ]
    return client.record_events(events).accepted_count


def main() -> None:
    parser = argparse.ArgumentParser(description="Ask recsvc for a shopper's next items.")
    parser.add_argument("--target", default="localhost:50051", help="server HOST:PORT")
    parser.add_argument("--user", default="", help="customer id (empty: anonymous)")
    parser.add_argument("--k", type=int, default=5, help="how many items")
    parser.add_argument("--token", help="bearer token, if the server wants one for events")
    args = parser.parse_args()

    with RecommenderClient(args.target, timeout=1.0, token=args.token) as client:
        print(f"model {client.model_info().model_version}")
        shown = next_items(client, args.user, args.k)
        for rank, item in enumerate(shown.items, 1):
            print(f"{rank}. {item.item_id} {item.score:.4f}")
        print(f"impressions recorded: {report_shown(client, args.user, shown)}")


if __name__ == "__main__":
    main()
