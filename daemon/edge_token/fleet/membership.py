"""This daemon's membership of the fleet: its one etcd lease (a single grant in flight, shared by every profile's
cycle that needs it, replaced once when lost), its role per profile, and the shared token keys it reads and
publishes. The election rules are `etcd.py`'s module docstring; this is the state that applies them."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import aiohttp

from edge_token.core.settings import FleetConfig
from edge_token.fleet.etcd import FOLLOWER, LEADER, STANDALONE, Etcd, EtcdLeaseNotFound, EtcdUnavailable, Stored


class Fleet:
    """This daemon's membership: one lease, a role per profile, and the shared token keys."""

    def __init__(self, config: FleetConfig, session: aiohttp.ClientSession, log: Any) -> None:
        self.config = config
        self.etcd = Etcd(config, session)
        self.log = log
        self.node = config.node_name or f"{socket.gethostname()}:{os.getpid()}"
        self.lease: str | None = None
        #: the one grant in flight, shared by every profile's cycle that needs the lease meanwhile
        self._granting: asyncio.Task[str] | None = None
        self._left = False
        self.grants = 0  # leases granted by this daemon (one at start, one after each loss)
        self.roles: dict[str, str] = {}
        self.leadership_changes: dict[str, int] = {}
        self.seen_revision: dict[str, int] = {}

    def key(self, profile: str, name: str) -> str:
        """The etcd key of one profile's `name` (token, leader)."""
        return f"{self.config.key_prefix.rstrip('/')}/{profile}/{name}"

    async def keepalive(self) -> None:
        """Keep the lease alive (called every lease_ttl/3); a lost lease is replaced at the next role check."""
        lease = self.lease
        if lease is None:
            return
        try:
            alive = await self.etcd.keepalive(lease)
        except EtcdUnavailable:
            return  # role checks will notice and go standalone
        if not alive:
            self._lost(lease)

    def _lost(self, lease: str) -> None:
        """etcd no longer has `lease` (and so none of our leader keys): the next role check grants one anew."""
        if self.lease == lease:  # not a newer lease granted while we asked about this one
            self.log.warning("fleet.lease_lost", node=self.node)
            self.lease = None

    async def current_lease(self) -> str:
        """The daemon's one lease, granted when there is none. Every profile's cycle that finds none waits for the
        same grant: 1,000 profiles starting together (or all noticing a lost lease) make one grant, not 1,000, of
        which only the last would be kept alive while the leader keys created under the others vanished after
        lease_ttl and let another daemon take over profiles this one still believed it led."""
        if self.lease is not None:
            return self.lease
        if self._granting is None:
            self._granting = asyncio.create_task(self._grant())
            self._granting.add_done_callback(_retrieve)
        # shielded: a cycle cancelled while waiting (a stop) must not cancel the grant the others wait for
        return await asyncio.shield(self._granting)

    async def _grant(self) -> str:
        try:
            lease = await self.etcd.grant(self.config.lease_ttl_seconds)
            self.grants += 1
            if self._left:  # granted while leaving: give it back now rather than let its keys live for a TTL
                await self.etcd.revoke(lease)
                raise EtcdUnavailable("left the fleet (daemon stopping)")
            self.lease = lease
            return lease
        finally:
            self._granting = None

    async def role(self, profile: str) -> str:
        """leader, follower, or standalone (etcd unreachable); tries to become leader if nobody is."""
        try:
            held = await self._claim(profile)
            role = LEADER if held.value == self.node else FOLLOWER
        except EtcdUnavailable as exc:
            role = STANDALONE
            if self.roles.get(profile) != STANDALONE:
                self.log.warning("fleet.standalone", profile=profile, message=str(exc))
        previous = self.roles.get(profile)
        if previous != role:
            self.roles[profile] = role
            self.leadership_changes[profile] = self.leadership_changes.get(profile, 0) + (LEADER in (previous, role))
            self.log.info("fleet.role", profile=profile, role=role, previous=previous, node=self.node)
        return role

    async def _claim(self, profile: str) -> Stored:
        """Create-if-absent the profile's leader key under our lease. A lease etcd no longer has (expired or revoked
        before the keep-alive noticed) is dropped and the claim made once more under the one new grant, so the
        profile does not go standalone for a poll."""
        key, lease = self.key(profile, "leader"), await self.current_lease()
        try:
            return await self.etcd.create_if_absent(key, self.node, lease)
        except EtcdLeaseNotFound:
            self._lost(lease)
        return await self.etcd.create_if_absent(key, self.node, await self.current_lease())

    async def read_token(self, profile: str) -> Stored:
        """The shared token of a profile as etcd holds it (remembering its revision for the next compare-and-swap)."""
        stored = await self.etcd.get(self.key(profile, "token"))
        self.seen_revision[profile] = stored.mod_revision
        return stored

    async def publish(self, profile: str, jwt: str) -> bool:
        """CAS-publish a verified token on the revision we last saw; False if someone published meanwhile."""
        revision = await self.etcd.put_if_revision(self.key(profile, "token"), jwt, self.seen_revision.get(profile, 0))
        if revision is None:
            self.log.info("fleet.publish_conflict", profile=profile)
            await self.read_token(profile)
            return False
        self.seen_revision[profile] = revision
        return True

    async def forget(self, profile: str) -> None:
        """A profile this daemon no longer runs (a reload removed it): drop its state and give up its leadership now.
        Our lease lives on for the other profiles, so a leader key left under it would keep every other daemon
        that still runs the profile a follower, waiting for tokens nobody requests, until they expired."""
        for table in (self.roles, self.leadership_changes, self.seen_revision):
            table.pop(profile, None)
        try:
            if await self.etcd.delete_if_value(self.key(profile, "leader"), self.node):
                self.log.info("fleet.resigned", profile=profile, node=self.node)
        except EtcdUnavailable as exc:  # left under the lease: another daemon takes over at our stop or lease loss
            self.log.warning("fleet.resign_failed", profile=profile, message=str(exc))

    async def leave(self) -> None:
        """Revoke the lease at shutdown so another daemon takes over at once, not after lease_ttl (a grant still in
        flight is waited for and revoked too)."""
        self._left = True
        granting = self._granting
        if granting is not None:
            await asyncio.wait([granting])  # it revokes what it gets (self._left)
        if self.lease is not None:
            try:
                await self.etcd.revoke(self.lease)
            except EtcdUnavailable:
                pass


def _retrieve(task: asyncio.Task[str]) -> None:
    """A grant's failure reaches every cycle waiting for it; with none left waiting (all cancelled) it is only
    marked retrieved here, so asyncio does not log "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()
