"""The database schema, its versioned migrations, and migrating safely from many instances.

Everything lives in one PostgreSQL schema (``budget.options.schema``, default
``squirrel_budget``). ``<schema>.meta`` names the application and the version. Migrations run
in one transaction each, under ``pg_advisory_xact_lock`` keyed on the schema, so instances
starting together on many hosts migrate it once, in order, and a schema is at version N or
N+1, never in between (PostgreSQL DDL is transactional). A schema that holds someone else's
tables, or was written by a newer version of this plugin, raises
:class:`~squirrel_models_postgres_budget.errors.UnusableDatabase` and is left untouched.

Each budget operation is one call of a PL/pgSQL function, so it is one round trip and one
transaction (a settlement with its ledger row included: ``settle_with_ledger``): the bucket
rows are locked (``SELECT ... FOR UPDATE``) in ``(scope, bucket)`` order before the headroom is
read, so no other session can reserve between the read and the write, and two sessions never
deadlock on each other's buckets. Money is integer nano-USD.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import UnusableDatabase

if TYPE_CHECKING:
    import psycopg

__all__ = ["APPLICATION", "LOCK_CLASS", "MIGRATIONS", "SCHEMA_VERSION", "check_schema_name", "migrate"]

APPLICATION = "squirrel-models-budget"
#: The first key of ``pg_advisory_xact_lock(int, int)`` ("SqBg"); the second is the schema's hash.
LOCK_CLASS = 0x53714267
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Locks the existing bucket rows of (scopes, buckets) in one global order.
_LOCK = """PERFORM 1 FROM {s}.buckets b JOIN unnest({scopes}, {buckets}) AS k(s, bk)
               ON b.scope = k.s AND b.bucket = k.bk
               ORDER BY b.scope, b.bucket FOR UPDATE OF b;"""
_ENSURE = """INSERT INTO {s}.buckets (scope, bucket)
               SELECT k.s, k.bk FROM unnest({scopes}, {buckets}) AS k(s, bk) ORDER BY 1, 2
               ON CONFLICT DO NOTHING;"""


def _lock(scopes: str, buckets: str) -> str:
    return _ENSURE.replace("{scopes}", scopes).replace("{buckets}", buckets) + "\n    " + \
        _LOCK.replace("{scopes}", scopes).replace("{buckets}", buckets)


_NOW = "coalesce(p_now, extract(epoch FROM clock_timestamp()))"


def _at(indent: int, sql: str) -> str:
    """``sql`` with its lines after the first moved right by ``indent`` spaces, to stand where
    it is spliced into a function body (the migrations' text stays as it was released)."""
    return sql.replace("\n", "\n" + " " * indent)


# The head of an INSERT of ledger rows (settle_with_ledger, a slice's flush, an expired slice).
_LEDGER_INSERT = """INSERT INTO {s}.ledger (at, request_id, attempt, provider, model, outcome,
        input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost,
        error_type, latency_s, scopes, usage_source)"""
# reconcile: marks the open leases past their expiry expired (skipping any another session is
# settling); followed by what it returns of them.
_CLAIM_EXPIRED = """UPDATE {s}.reservations r SET state = 1
WHERE r.id IN (SELECT x.id FROM {s}.reservations x
               WHERE x.state = 0 AND x.expires_at <= v_now
               FOR UPDATE SKIP LOCKED)
RETURNING """
# reconcile's end: forget expired leases older than p_retention, return how many expired.
_FORGET_EXPIRED = """IF p_retention IS NOT NULL THEN
    DELETE FROM {s}.reservations r
        WHERE r.state = 1 AND r.expires_at <= v_now - p_retention;
END IF;
RETURN coalesce(v_n, 0);"""

# Each entry migrates from version i to i + 1; ``{s}`` is the schema. Never edit a released
# entry: append one.
MIGRATIONS: tuple[Sequence[str], ...] = (
    # 1: budgets. Buckets keep running totals; reservations are leases (state 0 open,
    # 1 expired: its headroom is back, a late settle still commits once).
    (
        """CREATE TABLE {s}.buckets (
               scope text NOT NULL,
               bucket text NOT NULL,
               committed bigint NOT NULL DEFAULT 0,
               reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
               PRIMARY KEY (scope, bucket)) WITH (fillfactor = 50)""",
        """CREATE TABLE {s}.reservations (
               id text PRIMARY KEY,
               amount bigint NOT NULL CHECK (amount >= 0),
               scopes text[] NOT NULL,
               buckets text[] NOT NULL,
               request_id text NOT NULL DEFAULT '',
               created_at double precision NOT NULL,
               expires_at double precision NOT NULL,
               state smallint NOT NULL DEFAULT 0)""",
        "CREATE INDEX reservations_open_by_expiry ON {s}.reservations (expires_at) WHERE state = 0",
        "CREATE INDEX reservations_expired ON {s}.reservations (expires_at) WHERE state = 1",
        # Returns one row: granted (with its expiry), or the first charge without headroom
        # and whether expired leases are waiting to be reconciled.
        """CREATE FUNCTION {s}.reserve(p_id text, p_scopes text[], p_buckets text[],
                   p_limits bigint[], p_amount bigint, p_now double precision,
                   p_ttl double precision, p_request_id text)
               RETURNS TABLE (o_ok boolean, o_expires_at double precision, o_scope text,
                   o_bucket text, o_limit bigint, o_committed bigint, o_reserved bigint,
                   o_expired_waiting boolean)
               LANGUAGE plpgsql AS $fn$
           DECLARE
               v_now double precision := """ + _NOW + """;
               v record;
           BEGIN
               -- A retried call (the reply to the first was lost) reserves nothing twice.
               SELECT r.expires_at INTO v FROM {s}.reservations r WHERE r.id = p_id;
               IF FOUND THEN
                   RETURN QUERY SELECT true, v.expires_at, NULL::text, NULL::text, NULL::bigint,
                       NULL::bigint, NULL::bigint, false;
                   RETURN;
               END IF;
               """ + _lock("p_scopes", "p_buckets") + """
               FOR v IN SELECT b.scope, b.bucket, b.committed, b.reserved, k.lim
                        FROM unnest(p_scopes, p_buckets, p_limits) WITH ORDINALITY AS k(s, bk, lim, i)
                        JOIN {s}.buckets b ON b.scope = k.s AND b.bucket = k.bk ORDER BY k.i
               LOOP
                   IF v.committed + v.reserved + p_amount > v.lim THEN
                       RETURN QUERY SELECT false, NULL::double precision, v.scope, v.bucket, v.lim,
                           v.committed, v.reserved,
                           EXISTS (SELECT 1 FROM {s}.reservations r
                                   WHERE r.state = 0 AND r.expires_at <= v_now);
                       RETURN;
                   END IF;
               END LOOP;
               UPDATE {s}.buckets b SET reserved = b.reserved + p_amount
                   FROM unnest(p_scopes, p_buckets) AS k(s, bk)
                   WHERE b.scope = k.s AND b.bucket = k.bk;
               INSERT INTO {s}.reservations (id, amount, scopes, buckets, request_id, created_at,
                                             expires_at)
                   VALUES (p_id, p_amount, p_scopes, p_buckets, p_request_id, v_now, v_now + p_ttl);
               RETURN QUERY SELECT true, v_now + p_ttl, NULL::text, NULL::text, NULL::bigint,
                   NULL::bigint, NULL::bigint, false;
           END
           $fn$""",
        # Commits p_amount for an open or expired lease and drops it; returns the overspend.
        # An unknown id (already settled or released) commits nothing.
        """CREATE FUNCTION {s}.settle(p_id text, p_amount bigint) RETURNS bigint
               LANGUAGE plpgsql AS $fn$
           DECLARE
               v record;
               v_held bigint;
           BEGIN
               DELETE FROM {s}.reservations r WHERE r.id = p_id
                   RETURNING r.amount, r.scopes, r.buckets, r.state INTO v;
               IF NOT FOUND THEN
                   RETURN 0;
               END IF;
               v_held := CASE WHEN v.state = 0 THEN v.amount ELSE 0 END;
               """ + _lock("v.scopes", "v.buckets") + """
               UPDATE {s}.buckets b SET committed = b.committed + p_amount,
                                        reserved = b.reserved - v_held
                   FROM unnest(v.scopes, v.buckets) AS k(s, bk)
                   WHERE b.scope = k.s AND b.bucket = k.bk;
               RETURN greatest(p_amount - v.amount, 0);
           END
           $fn$""",
        """CREATE FUNCTION {s}.release_reservation(p_id text) RETURNS void
               LANGUAGE plpgsql AS $fn$
           DECLARE
               v record;
           BEGIN
               DELETE FROM {s}.reservations r WHERE r.id = p_id
                   RETURNING r.amount, r.scopes, r.buckets, r.state INTO v;
               IF NOT FOUND OR v.state <> 0 THEN
                   RETURN;
               END IF;
               """ + _LOCK.replace("{scopes}", "v.scopes").replace("{buckets}", "v.buckets") + """
               UPDATE {s}.buckets b SET reserved = b.reserved - v.amount
                   FROM unnest(v.scopes, v.buckets) AS k(s, bk)
                   WHERE b.scope = k.s AND b.bucket = k.bk;
           END
           $fn$""",
        # Expires open leases past their expiry (skipping any another session is settling),
        # returns their headroom, and forgets expired leases older than p_retention.
        """CREATE FUNCTION {s}.reconcile(p_now double precision, p_retention double precision)
               RETURNS integer LANGUAGE plpgsql AS $fn$
           DECLARE
               v_now double precision := """ + _NOW + """;
               v_n integer;
               v_s text[];
               v_b text[];
               v_a bigint[];
           BEGIN
               WITH claimed AS (
                   """ + _at(19, _CLAIM_EXPIRED) + """r.amount, r.scopes, r.buckets),
               d AS (SELECT k.s, k.bk, sum(c.amount)::bigint AS a
                     FROM claimed c, unnest(c.scopes, c.buckets) AS k(s, bk) GROUP BY k.s, k.bk)
               SELECT (SELECT count(*) FROM claimed), array_agg(d.s ORDER BY d.s, d.bk),
                      array_agg(d.bk ORDER BY d.s, d.bk), array_agg(d.a ORDER BY d.s, d.bk)
                   INTO v_n, v_s, v_b, v_a FROM d;
               IF v_n > 0 THEN
                   """ + _LOCK.replace("{scopes}", "v_s").replace("{buckets}", "v_b") + """
                   UPDATE {s}.buckets b SET reserved = b.reserved - k.a
                       FROM unnest(v_s, v_b, v_a) AS k(s, bk, a)
                       WHERE b.scope = k.s AND b.bucket = k.bk;
               END IF;
               """ + _at(15, _FORGET_EXPIRED) + """
           END
           $fn$""",
        # (committed, reserved) of each bucket in the order asked; expired leases first.
        """CREATE FUNCTION {s}.usage(p_scopes text[], p_buckets text[], p_now double precision)
               RETURNS TABLE (o_committed bigint, o_reserved bigint)
               LANGUAGE plpgsql AS $fn$
           BEGIN
               IF EXISTS (SELECT 1 FROM {s}.reservations r
                          WHERE r.state = 0 AND r.expires_at <= """ + _NOW + """) THEN
                   PERFORM {s}.reconcile(p_now, NULL);
               END IF;
               RETURN QUERY SELECT coalesce(b.committed, 0), coalesce(b.reserved, 0)
                   FROM unnest(p_scopes, p_buckets) WITH ORDINALITY AS k(s, bk, i)
                   LEFT JOIN {s}.buckets b ON b.scope = k.s AND b.bucket = k.bk
                   ORDER BY k.i;
           END
           $fn$""",
    ),
    # 2: the usage ledger, one row per attempt; cost in nano-USD (NULL: unknown price).
    (
        """CREATE TABLE {s}.ledger (
               id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               at timestamptz NOT NULL,
               request_id text NOT NULL,
               attempt integer NOT NULL,
               provider text NOT NULL,
               model text NOT NULL,
               outcome text NOT NULL,
               input_tokens bigint NOT NULL,
               output_tokens bigint NOT NULL,
               cached_tokens bigint NOT NULL,
               reasoning_tokens bigint NOT NULL,
               cost bigint,
               error_type text,
               latency_s double precision NOT NULL,
               scopes text[] NOT NULL,
               usage_source text NOT NULL)""",
        "CREATE INDEX ledger_by_time ON {s}.ledger (at)",
    ),
    # 3: settle and write the attempt's ledger row in one transaction (settles_with_ledger), so
    # a process killed at any moment leaves both or neither. The lease row is locked first, as
    # settle's DELETE locks it, so the lock order is settle's; an unknown id (already settled
    # or released) commits nothing and writes no row.
    (
        """CREATE FUNCTION {s}.settle_with_ledger(p_id text, p_amount bigint,
                   p_at timestamptz, p_request_id text, p_attempt integer, p_provider text,
                   p_model text, p_outcome text, p_input_tokens bigint, p_output_tokens bigint,
                   p_cached_tokens bigint, p_reasoning_tokens bigint, p_cost bigint,
                   p_error_type text, p_latency_s double precision, p_scopes text[],
                   p_usage_source text) RETURNS bigint
               LANGUAGE plpgsql AS $fn$
           DECLARE
               v_over bigint;
           BEGIN
               PERFORM 1 FROM {s}.reservations r WHERE r.id = p_id FOR UPDATE;
               IF NOT FOUND THEN
                   RETURN 0;
               END IF;
               v_over := {s}.settle(p_id, p_amount);
               """ + _at(15, _LEDGER_INSERT) + """
                   VALUES (p_at, p_request_id, p_attempt, p_provider, p_model, p_outcome,
                       p_input_tokens, p_output_tokens, p_cached_tokens, p_reasoning_tokens,
                       p_cost, p_error_type, p_latency_s, p_scopes, p_usage_source);
               RETURN v_over;
           END
           $fn$""",
    ),
    # 4: leased slices (squirrel_models.slices). A slice is a lease (``slice``) whose room a
    # process serves reservations from in memory; ``spent`` and ``excess`` are the cumulative
    # amounts settled through it within and beyond its room, ``rows_upto`` the number of the
    # last ledger row written for it (a repeated flush writes nothing twice), ``charge_row``
    # the ledger row that charged it in full when it expired: reconcile now charges an expired
    # slice in full instead of returning its room (its process may have spent any of it).
    (
        "ALTER TABLE {s}.reservations ADD COLUMN slice boolean NOT NULL DEFAULT false",
        "ALTER TABLE {s}.reservations ADD COLUMN spent bigint NOT NULL DEFAULT 0",
        "ALTER TABLE {s}.reservations ADD COLUMN excess bigint NOT NULL DEFAULT 0",
        "ALTER TABLE {s}.reservations ADD COLUMN rows_upto bigint NOT NULL DEFAULT 0",
        "ALTER TABLE {s}.reservations ADD COLUMN charge_row bigint",
        """CREATE OR REPLACE FUNCTION {s}.reconcile(p_now double precision,
                   p_retention double precision)
               RETURNS integer LANGUAGE plpgsql AS $fn$
           DECLARE
               v_now double precision := """ + _NOW + """;
               v_n integer;
               v_ids text[];
               v_s text[];
               v_b text[];
               v_a bigint[];
               v_c bigint[];
               v record;
               v_row bigint;
           BEGIN
               WITH claimed AS (
                   """ + _at(19, _CLAIM_EXPIRED) + """r.id, r.amount, r.scopes, r.buckets, r.slice),
               d AS (SELECT k.s, k.bk, sum(c.amount)::bigint AS a,
                            sum(CASE WHEN c.slice THEN c.amount ELSE 0 END)::bigint AS ch
                     FROM claimed c, unnest(c.scopes, c.buckets) AS k(s, bk) GROUP BY k.s, k.bk)
               SELECT (SELECT count(*) FROM claimed),
                      (SELECT array_agg(c.id) FROM claimed c WHERE c.slice),
                      array_agg(d.s ORDER BY d.s, d.bk), array_agg(d.bk ORDER BY d.s, d.bk),
                      array_agg(d.a ORDER BY d.s, d.bk), array_agg(d.ch ORDER BY d.s, d.bk)
                   INTO v_n, v_ids, v_s, v_b, v_a, v_c FROM d;
               IF v_n > 0 THEN
                   """ + _LOCK.replace("{scopes}", "v_s").replace("{buckets}", "v_b") + """
                   UPDATE {s}.buckets b SET reserved = b.reserved - k.a,
                                            committed = b.committed + k.ch
                       FROM unnest(v_s, v_b, v_a, v_c) AS k(s, bk, a, ch)
                       WHERE b.scope = k.s AND b.bucket = k.bk;
                   FOR v IN SELECT r.id, r.amount, r.scopes FROM {s}.reservations r
                            WHERE r.id = ANY(coalesce(v_ids, '{}'::text[])) ORDER BY r.id LOOP
                       """ + _at(23, _LEDGER_INSERT) + """
                           VALUES (to_timestamp(v_now), 'slice:' || v.id, 0, '(slice)',
                               '(unflushed)', 'charged', 0, 0, 0, 0, v.amount, NULL, 0,
                               ARRAY(SELECT DISTINCT x FROM unnest(v.scopes) AS x ORDER BY x),
                               'slice')
                           RETURNING id INTO v_row;
                       UPDATE {s}.reservations r SET charge_row = v_row WHERE r.id = v.id;
                   END LOOP;
               END IF;
               """ + _at(15, _FORGET_EXPIRED) + """
           END
           $fn$""",
        # One slice's flush (squirrel_models.slices.SliceSync): cumulative spend applied once,
        # its new ledger rows (numbered; scopes as JSON arrays), its room topped up to p_want
        # (at most p_fraction of the room left, never below p_need: else nothing is added and
        # the first key without room is returned) or handed back down to it, its lease renewed.
        """CREATE FUNCTION {s}.slice_sync(p_id text, p_scopes text[], p_buckets text[],
                   p_limits bigint[], p_spent bigint, p_excess bigint, p_need bigint,
                   p_want bigint, p_fraction double precision, p_close boolean,
                   p_known boolean, p_now double precision, p_lease double precision,
                   p_nums bigint[], p_at timestamptz[], p_request_id text[], p_attempt integer[],
                   p_provider text[], p_model text[], p_outcome text[], p_input bigint[],
                   p_output bigint[], p_cached bigint[], p_reasoning bigint[], p_cost bigint[],
                   p_error text[], p_latency double precision[], p_row_scopes text[],
                   p_source text[])
               RETURNS TABLE (o_amount bigint, o_spent bigint, o_excess bigint,
                   o_rows_upto bigint, o_room bigint, o_expired boolean, o_scope text,
                   o_bucket text, o_limit bigint, o_committed bigint, o_reserved bigint)
               LANGUAGE plpgsql AS $fn$
           DECLARE
               v_now double precision := """ + _NOW + """;
               v record;
               v_amount bigint;
               v_state smallint;
               v_spent bigint;
               v_excess bigint;
               v_upto bigint;
               v_charge bigint;
               v_found boolean;
               d_spent bigint;
               d_excess bigint;
               v_moved bigint := 0;
               v_add bigint;
               v_covered bigint := 0;
               v_room bigint := 0;
               v_target bigint;
               v_extra bigint;
               r_scope text;
               r_bucket text;
               r_limit bigint;
               r_committed bigint;
               r_reserved bigint;
           BEGIN
               SELECT r.amount, r.state, r.spent, r.excess, r.rows_upto, r.charge_row
                   INTO v FROM {s}.reservations r WHERE r.id = p_id FOR UPDATE;
               v_found := FOUND;
               IF v_found THEN
                   v_amount := v.amount; v_state := v.state; v_spent := v.spent;
                   v_excess := v.excess; v_upto := v.rows_upto; v_charge := v.charge_row;
               ELSIF p_known THEN
                   -- flushed before, then forgotten (expired longer ago than the retention)
                   v_amount := 0; v_state := 1; v_spent := p_spent; v_excess := 0; v_upto := 0;
               ELSE
                   INSERT INTO {s}.reservations (id, amount, scopes, buckets, request_id,
                                                 created_at, expires_at, slice)
                       VALUES (p_id, 0, p_scopes, p_buckets, 'slice', v_now, v_now + p_lease, true);
                   v_found := true;
                   v_amount := 0; v_state := 0; v_spent := 0; v_excess := 0; v_upto := 0;
               END IF;
               d_spent := greatest(p_spent - v_spent, 0);
               d_excess := greatest(p_excess - v_excess, 0);
               """ + _lock("p_scopes", "p_buckets") + """
               IF v_state = 0 THEN
                   v_moved := least(d_spent, v_amount);
                   v_add := d_spent + d_excess;
                   v_amount := v_amount - v_moved;
               ELSE
                   IF v_charge IS NOT NULL AND d_spent > 0 THEN
                       SELECT least(d_spent, l.cost) INTO v_covered FROM {s}.ledger l
                           WHERE l.id = v_charge;
                       v_covered := coalesce(v_covered, 0);
                       UPDATE {s}.ledger l SET cost = l.cost - v_covered WHERE l.id = v_charge;
                   END IF;
                   v_add := d_spent - v_covered + d_excess;
               END IF;
               IF v_moved > 0 OR v_add > 0 THEN
                   UPDATE {s}.buckets b SET committed = b.committed + v_add,
                                            reserved = b.reserved - v_moved
                       FROM unnest(p_scopes, p_buckets) AS k(s, bk)
                       WHERE b.scope = k.s AND b.bucket = k.bk;
               END IF;
               """ + _at(15, _LEDGER_INSERT) + """
                   SELECT x.at, x.rid, x.att, x.prov, x.model, x.outcome, x.tin, x.tout,
                          x.tcached, x.treason, x.cost, x.err, x.lat,
                          ARRAY(SELECT json_array_elements_text(x.sc::json)), x.src
                   FROM unnest(p_nums, p_at, p_request_id, p_attempt, p_provider, p_model,
                               p_outcome, p_input, p_output, p_cached, p_reasoning, p_cost,
                               p_error, p_latency, p_row_scopes, p_source)
                        WITH ORDINALITY AS x(num, at, rid, att, prov, model, outcome, tin, tout,
                                             tcached, treason, cost, err, lat, sc, src, i)
                   WHERE x.num > v_upto ORDER BY x.i;
               v_upto := greatest(v_upto, coalesce((SELECT max(n) FROM unnest(p_nums) AS n), 0));
               IF v_state = 0 THEN
                   SELECT min(k.lim - b.committed - b.reserved) INTO v_room
                       FROM unnest(p_scopes, p_buckets, p_limits) AS k(s, bk, lim)
                       JOIN {s}.buckets b ON b.scope = k.s AND b.bucket = k.bk;
                   v_room := greatest(coalesce(v_room, 0), 0);
                   IF p_want <= v_amount THEN
                       v_target := greatest(p_want, 0);
                   ELSE
                       v_extra := least(p_want - v_amount, v_room,
                                        greatest(p_need - v_amount,
                                                 floor(v_room * p_fraction)::bigint));
                       IF v_amount + v_extra < p_need THEN
                           v_target := v_amount;
                           SELECT b.scope, b.bucket, k.lim, b.committed, b.reserved
                               INTO r_scope, r_bucket, r_limit, r_committed, r_reserved
                               FROM unnest(p_scopes, p_buckets, p_limits) WITH ORDINALITY
                                    AS k(s, bk, lim, i)
                               JOIN {s}.buckets b ON b.scope = k.s AND b.bucket = k.bk
                               WHERE k.lim - b.committed - b.reserved < p_need - v_amount
                               ORDER BY k.i LIMIT 1;
                       ELSE
                           v_target := v_amount + v_extra;
                       END IF;
                   END IF;
                   IF v_target <> v_amount THEN
                       UPDATE {s}.buckets b SET reserved = b.reserved + (v_target - v_amount)
                           FROM unnest(p_scopes, p_buckets) AS k(s, bk)
                           WHERE b.scope = k.s AND b.bucket = k.bk;
                       v_room := v_room - greatest(v_target - v_amount, 0);
                       v_amount := v_target;
                   END IF;
               END IF;
               IF v_state = 0 AND p_close AND v_amount = 0 THEN
                   DELETE FROM {s}.reservations r WHERE r.id = p_id;
               ELSIF v_found THEN
                   UPDATE {s}.reservations r SET amount = v_amount,
                           spent = greatest(p_spent, v_spent),
                           excess = greatest(p_excess, v_excess), rows_upto = v_upto,
                           expires_at = CASE WHEN r.state = 0 THEN v_now + p_lease
                                             ELSE r.expires_at END
                       WHERE r.id = p_id;
               END IF;
               RETURN QUERY SELECT CASE WHEN v_state = 0 THEN v_amount ELSE 0 END,
                   greatest(p_spent, v_spent), greatest(p_excess, v_excess), v_upto,
                   greatest(v_room, 0), v_state <> 0, r_scope, r_bucket, r_limit,
                   r_committed, r_reserved;
           END
           $fn$""",
    ),
    # 5: a stalled slice's unused room given back (SliceSync.holds). Run in slice_sync's
    # statement, after it (its buckets locked, what the flush spent already taken off the
    # charge): the charge row of a slice charged in full is lowered to at most ``p_holds``,
    # what its live process's open reservations still hold, and committed with it.
    (
        """CREATE FUNCTION {s}.slice_refund(p_id text, p_holds bigint) RETURNS bigint
               LANGUAGE plpgsql AS $fn$
           DECLARE
               v record;
               v_refund bigint;
           BEGIN
               IF p_holds IS NULL THEN
                   RETURN 0;
               END IF;
               SELECT r.state, r.charge_row, r.scopes, r.buckets INTO v
                   FROM {s}.reservations r WHERE r.id = p_id FOR UPDATE;
               IF NOT FOUND OR v.state = 0 OR v.charge_row IS NULL THEN
                   RETURN 0;
               END IF;
               SELECT greatest(l.cost - p_holds, 0) INTO v_refund FROM {s}.ledger l
                   WHERE l.id = v.charge_row;
               IF coalesce(v_refund, 0) = 0 THEN
                   RETURN 0;
               END IF;
               """ + _lock("v.scopes", "v.buckets") + """
               UPDATE {s}.ledger l SET cost = l.cost - v_refund WHERE l.id = v.charge_row;
               UPDATE {s}.buckets b SET committed = b.committed - v_refund
                   FROM unnest(v.scopes, v.buckets) AS k(s, bk)
                   WHERE b.scope = k.s AND b.bucket = k.bk;
               RETURN v_refund;
           END
           $fn$""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def check_schema_name(name: str) -> str:
    """``name`` if it is a plain lower-case identifier (it is written into SQL unquoted)."""
    if not _NAME.match(name):
        raise ValueError("must be a lower-case identifier: letters, digits and _, at most 63")
    return name


def _version(cur: psycopg.Cursor[Any], schema: str) -> int | None:
    """The schema's version, None if it is missing or empty; raises UnusableDatabase."""
    cur.execute("SELECT to_regclass(%s) IS NOT NULL, "
                "(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm'))",
                (f"{schema}.meta", schema))
    has_meta, n_tables = cur.fetchone() or (False, 0)
    if not has_meta:
        if n_tables:
            raise UnusableDatabase(schema, f"holds {n_tables} table(s) of another application")
        return None
    cur.execute(f"SELECT application, version FROM {schema}.meta WHERE id = 1")
    row = cur.fetchone()
    if row is None or row[0] != APPLICATION:
        raise UnusableDatabase(schema, f"belongs to {row[0] if row else 'an unknown application'!r}")
    if row[1] > SCHEMA_VERSION:
        raise UnusableDatabase(schema, f"has schema version {row[1]}, newer than this plugin's "
                                       f"{SCHEMA_VERSION}: upgrade squirrel-models-postgres-budget")
    return int(row[1])


def migrate(conn: psycopg.Connection[Any], schema: str, target: int = SCHEMA_VERSION,
            migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Apply the missing migrations up to ``target``, each in its own transaction under the
    schema's advisory lock (another instance migrating at the same time waits, then finds the
    work done). ``conn`` is in autocommit mode. Returns the resulting version."""
    check_schema_name(schema)
    while True:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, schema))
            version = _version(cur, schema)
            if version is None:
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                cur.execute(f"CREATE TABLE {schema}.meta (id integer PRIMARY KEY CHECK (id = 1), "
                            "application text NOT NULL, version integer NOT NULL)")
                cur.execute(f"INSERT INTO {schema}.meta VALUES (1, %s, 0)", (APPLICATION,))
                version = 0
            if version >= target:
                return version
            for statement in migrations[version]:
                cur.execute(statement.replace("{s}", schema))
            cur.execute(f"UPDATE {schema}.meta SET version = %s WHERE id = 1", (version + 1,))
