"""HTTP clients that drive serve-mode recordings (tests and goldens)."""

from __future__ import annotations

import random
import threading
import time

import requests


def irregular_arrivals(base_url: str, seed: int = 7) -> None:
    """Ten requests at random moments from as many client threads; some name
    their rid, some leave it to the server; the client aborts one of them."""
    rng = random.Random(seed)
    threads = []

    def post(payload):
        requests.post(f"{base_url}/generate", json=payload, timeout=120)

    for k in range(10):
        payload = {"input_ids": [rng.randint(3, 1000) for _ in range(rng.randint(8, 200))],
                   "sampling_params": {"max_new_tokens": rng.randint(4, 40)}}
        if k % 2 == 0:
            payload["rid"] = f"client-{k}"
        thread = threading.Thread(target=post, args=(payload,))
        thread.start()
        threads.append(thread)
        time.sleep(rng.uniform(0.0, 0.15))
        if k == 5:
            requests.post(f"{base_url}/abort_request", json={"rid": "client-4"}, timeout=30)
    for thread in threads:
        thread.join()
