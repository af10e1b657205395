"""`Links`: the upkeep of this node's long links (Link / LinkReply / Unlink) and of the overlay as members
change state.

Owns the long-link requests in flight and the members that recently refused one. The link tables
themselves are the `Overlay`'s (overlay.py): near links follow from the member table, long links out are
drawn by harmonic distance and asked for with a `Link` request the target may refuse (it caps its incoming
long links), long links in are those others hold to this node.

How it works: at every probe period, and whenever a long link is lost or a request refused, `maintain`
asks for new long links until max_long_links are held or pending. A request unanswered for two probe
periods is forgotten; a member that refused is not asked again for 30 probe periods. A late acceptance,
or one that no longer fits, is undone with `Unlink`. When a member's state changes the overlay
recomputes its links (`member_changed`); a lost long link out is released with `Unlink` and replaced.

Keeps true: long links out + pending requests <= max_long_links; every member this node stops holding a
long link to is told (`Unlink`), so the other side frees its incoming slot.
"""

from __future__ import annotations

from dsm.core.context import Context
from dsm.core.membership import Membership
from dsm.core.messages import Link, LinkReply, Unlink, Update
from dsm.core.overlay import Overlay
from dsm.core.ring import State

_ALIVE = int(State.ALIVE)
_DEAD = int(State.DEAD)
_LEFT = int(State.LEFT)


class Links:
    """This node's long-link requests and upkeep (see the module docstring)."""

    def __init__(self, context: Context, overlay: Overlay, membership: Membership) -> None:
        self.context = context
        self.overlay = overlay
        self.membership = membership
        # Requests in flight: slot -> (request seq, when sent).
        self.pending: dict[int, tuple[int, int]] = {}
        # Members that refused a request: slot -> when.
        self.refused: dict[int, int] = {}

    def maintain(self) -> None:
        """Requests long links until `max_long_links` are held or pending; forgets requests left unanswered."""
        context = self.context
        if not context.joined:
            return
        now = context.now
        settings = context.settings
        expiry = 2 * settings.probe_interval_ms
        for slot, (_, sent) in list(self.pending.items()):
            if now - sent > expiry:
                del self.pending[slot]
        for slot, when in list(self.refused.items()):
            if now - when > 30 * settings.probe_interval_ms:
                del self.refused[slot]
        overlay = self.overlay
        missing = settings.max_long_links - len(overlay.long_out) - len(self.pending)
        exclude = set(self.pending) | set(self.refused)
        live = context.table.live_count()
        info = context.info
        for _ in range(max(0, missing)):
            target = overlay.draw_long_target(live, exclude)
            if target is None:
                break
            exclude.add(target)
            seq = context.next_seq()
            self.pending[target] = (seq, now)
            context.send_to_slot(target, Link(seq, context.id, info.addr, info.region, self.membership.incarnation))

    def member_changed(self, slot: int, state: int) -> None:
        """Another member's state changed: the overlay follows, and a lost long link is released."""
        _, lost_long = self.overlay.member_changed(slot, state)
        if state in (_DEAD, _LEFT):
            self.pending.pop(slot, None)
        if lost_long:
            self.context.send_to_slot(slot, Unlink(self.context.id))
            self.maintain()

    def on_link(self, message: Link) -> None:
        self.membership.apply(Update(_ALIVE, message.source, message.incarnation, message.addr, message.region, ""))
        slot = self.context.directory.slot(message.source)
        if slot is None:
            return  # the request carried an invalid entry (counted in bad_updates)
        accepted = self.overlay.usable(slot) and self.overlay.accept_long_in(slot)
        self.context.send_to_slot(slot, LinkReply(message.seq, self.context.id, accepted))

    def on_link_reply(self, message: LinkReply) -> None:
        context = self.context
        slot = context.directory.slot(message.source)
        if slot is None:
            return
        overlay = self.overlay
        pending = self.pending.get(slot)
        if pending is None or pending[0] != message.seq:
            if message.accepted and slot not in overlay.long_out:
                context.send_to_slot(slot, Unlink(context.id))  # a late answer we no longer wait for
            return
        del self.pending[slot]
        if message.accepted and overlay.usable(slot) and len(overlay.long_out) < context.settings.max_long_links:
            overlay.add_long_out(slot)
            return
        if message.accepted:
            context.send_to_slot(slot, Unlink(context.id))
        else:
            context.stats.link_refusals += 1
            self.refused[slot] = context.now
        self.maintain()

    def on_unlink(self, message: Unlink) -> None:
        slot = self.context.directory.slot(message.source)
        if slot is not None:
            self.overlay.drop_long_in(slot)


__all__ = ["Links"]
