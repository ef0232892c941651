"""The bundled auth server as a product (`edge-token local-auth`, the demo): it may run for days, so it keeps no
record that grows with its traffic (the tests' recording and fault injection live in tests/faultyauth.py)."""

from __future__ import annotations

from collections.abc import Sized

import aiohttp

from edge_token.localauth import DEFAULT_AUDIENCE, LocalAuthServer

ROUNDS = 100


def footprint(server: LocalAuthServer) -> dict[str, int]:
    """The size of every container the server holds (lists, dicts, deques, tuples; not strings)."""
    return {
        name: len(value)
        for name, value in vars(server).items()
        if isinstance(value, Sized) and not isinstance(value, str)
    }


async def test_a_long_running_server_keeps_no_record_that_grows_with_traffic() -> None:
    """Invariant: after the first round, any number of further token requests (granted, refused for a wrong secret,
    refused for a wrong grant) and JWKS fetches leave the size of every container the server holds unchanged,
    while its counters still count."""
    server = LocalAuthServer({"client": "s3cret"}, ttl=60, rate_limit=10_000, quotas={"per_hour": (10_000, 3600)})
    await server.start()
    good = {
        "grant_type": "client_credentials", "client_id": "client", "client_secret": "s3cret", "audience": DEFAULT_AUDIENCE
    }  # fmt: skip
    forms = [good, {**good, "client_secret": "wrong"}, {**good, "grant_type": "password"}]
    try:
        async with aiohttp.ClientSession() as http:

            async def one_round() -> list[int]:
                statuses = []
                for form in forms:
                    async with http.post(server.token_url, data=form) as answer:
                        await answer.read()
                        statuses.append(answer.status)
                async with http.get(server.jwks_url) as answer:
                    await answer.read()
                    statuses.append(answer.status)
                return statuses

            assert await one_round() == [200, 401, 403, 200]
            before = footprint(server)
            for _ in range(ROUNDS):
                assert await one_round() == [200, 401, 403, 200]
            assert footprint(server) == before
    finally:
        await server.stop()
    assert (server.token_requests, server.tokens_issued, server.jwks_requests) == (
        3 * (ROUNDS + 1),
        ROUNDS + 1,
        ROUNDS + 1,
    )
