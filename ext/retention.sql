------------------------------------------------------------------------------------------------
-- Retention: bemi.changes partitioned by committed_at, old partitions dropped
------------------------------------------------------------------------------------------------
-- bemi_set_retention() turns it on. The worker then keeps partitions made ahead of time and
-- drops those older than the retention (bemi._maintain_changes, about every minute). A change
-- whose commit time has no partition of its own lands in bemi.changes_default, never nowhere:
-- when a partition is made for its range later, it is moved there first.

-- No row: partitions are not managed and every change stays in bemi.changes_default.
CREATE TABLE bemi.retention (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    retention          interval CHECK (retention > interval '0'),
    partition_interval interval NOT NULL CHECK (partition_interval >= interval '1 second'),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON bemi.retention FROM PUBLIC;
GRANT SELECT ON bemi.retention TO bemi_reader;
SELECT pg_catalog.pg_extension_config_dump('bemi.retention', '');

-- The partitions of bemi.changes other than the default, with their bounds.
CREATE FUNCTION bemi._partitions(OUT part regclass, OUT from_time timestamptz, OUT to_time timestamptz)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
    SELECT c.oid::regclass,
           CASE WHEN b[1] = 'MINVALUE' THEN '-infinity' ELSE b[2]::timestamptz END,
           CASE WHEN b[3] = 'MAXVALUE' THEN 'infinity' ELSE b[4]::timestamptz END
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid,
           regexp_match(pg_get_expr(c.relpartbound, c.oid),
                        '^FOR VALUES FROM \((MINVALUE|''([^'']*)'')\) TO \((MAXVALUE|''([^'']*)'')\)$') b
     WHERE i.inhparent = 'bemi.changes'::regclass AND b IS NOT NULL
     ORDER BY 2
$$;

-- The start of the partition holding `at`: whole months for intervals of months, else a
-- multiple of the interval since 2000-01-01 UTC (so '1 day' gives UTC days).
CREATE FUNCTION bemi._partition_start(at timestamptz, step interval) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    months int := extract(year FROM step)::int * 12 + extract(month FROM step)::int;
    m int;
BEGIN
    IF months = 0 THEN
        RETURN date_bin(step, at, timestamptz '2000-01-01 00:00:00+00');
    END IF;
    m := (extract(year FROM at)::int - 2000) * 12 + extract(month FROM at)::int - 1;
    RETURN timestamptz '2000-01-01 00:00:00+00' + make_interval(months => m - ((m % months) + months) % months);
END $$;

-- Makes the partition [lo, hi), first moving into it the changes bemi.changes_default holds for
-- that range. The new table takes no lock that stops reading bemi.changes; the default
-- partition is locked briefly. Writes of bemi.changes wait (SHARE ROW EXCLUSIVE): a write that
-- routed its rows before the partition existed would find the default partition refusing them
-- once it got its lock (the worker's first write after a change committed in [lo, hi) did).
CREATE FUNCTION bemi._make_partition(lo timestamptz, hi timestamptz) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    name text := 'changes_' || to_char(lo, CASE WHEN lo = date_trunc('day', lo) THEN 'YYYYMMDD'
                                                ELSE 'YYYYMMDD"_"HH24MISS' END);
    moved bigint;
BEGIN
    LOCK TABLE bemi.changes IN SHARE ROW EXCLUSIVE MODE;
    LOCK TABLE bemi.changes_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('CREATE TABLE bemi.%I (LIKE bemi.changes_default INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)', name);
    EXECUTE format('WITH moved AS (DELETE FROM bemi.changes_default WHERE committed_at >= $1 AND committed_at < $2 RETURNING *)'
                   ' INSERT INTO bemi.%I SELECT * FROM moved', name) USING lo, hi;
    GET DIAGNOSTICS moved = ROW_COUNT;
    EXECUTE format('ALTER TABLE bemi.changes ATTACH PARTITION bemi.%I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    RETURN format('created bemi.%I for [%s, %s)', name, lo, hi)
        || CASE WHEN moved > 0 THEN format(', moving %s changes out of bemi.changes_default', moved) ELSE '' END;
END $$;

-- One round of upkeep at time `now`: partitions past the retention dropped, then partitions made
-- for the current and the next intervals (and for any gap since the newest one, so that a worker
-- that was down finds room for its backlog). A step that cannot get its locks within lock_timeout
-- is left for the next round: waiting longer would hold up readers queued behind the lock.
-- Returns what it did, and when it wants to run again.
CREATE FUNCTION bemi._maintain_changes(now timestamptz, OUT actions text[], OUT next_in interval)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET lock_timeout = '500ms' AS $$
DECLARE
    cfg bemi.retention;
    lo timestamptz;
    hi timestamptz;
    horizon timestamptz;
    cutoff timestamptz;
    newest timestamptz;
    p record;
    part text;
    n bigint;
    upto bigint;
BEGIN
    actions := '{}';
    next_in := '5 seconds';  -- not set up: look again soon, for bemi_set_retention()
    SELECT * INTO cfg FROM bemi.retention;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- One round at a time (the worker's, a user's): decisions are made under this lock.
    BEGIN
        LOCK TABLE bemi.changes IN SHARE UPDATE EXCLUSIVE MODE;
    EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
        actions := ARRAY['bemi.changes is busy; upkeep is tried again later'];
        next_in := '10 seconds';
        RETURN;
    END;
    next_in := least(greatest(cfg.partition_interval / 4, interval '1 second'), interval '1 minute');

    -- Where the partitions end, before retention drops any (see the gap below).
    SELECT max(to_time) INTO newest FROM bemi._partitions() WHERE to_time < 'infinity';

    -- Drops first: they need bemi.changes itself locked, and taking that lock before any of
    -- its partitions keeps the order readers use (no deadlock with a reader).
    IF cfg.retention IS NOT NULL THEN
        -- Time travel cannot reach behind the cutoff any more: say so before anything goes.
        cutoff := now - cfg.retention;
        FOR p IN SELECT * FROM bemi._partitions() WHERE to_time <= cutoff LOOP
            part := p.part::text;
            BEGIN
                PERFORM bemi._trail_starts_at(p.to_time);
                EXECUTE format('ALTER TABLE bemi.changes DETACH PARTITION %s', part);
                -- The hash chain is cut there: anchors keep what remains checkable (ext/chain.sql).
                PERFORM bemi._cut_chain(p.part);
                EXECUTE format('DROP TABLE %s', part);
                actions := actions || format('dropped %s [%s, %s): older than the retention of %s', part, p.from_time, p.to_time, cfg.retention);
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                actions := actions || format('could not lock bemi.changes to drop %s; trying again later', part);
                EXIT;
            END;
        END LOOP;
    END IF;

    -- Partitions from the current interval (or the end of the newest partition, if that is
    -- later than the retention's cutoff) to three intervals (and at least 15 seconds) ahead.
    lo := bemi._partition_start(now, cfg.partition_interval);
    IF newest IS NOT NULL AND newest < lo THEN
        lo := greatest(newest, bemi._partition_start(now - coalesce(cfg.retention, interval '0'), cfg.partition_interval));
    END IF;
    horizon := now + greatest(3 * cfg.partition_interval, interval '15 seconds');
    WHILE lo < horizon LOOP
        hi := bemi._partition_start(lo, cfg.partition_interval) + cfg.partition_interval;
        SELECT * INTO p FROM bemi._partitions() WHERE from_time <= lo AND to_time > lo;
        IF FOUND THEN
            lo := p.to_time;
            CONTINUE;
        END IF;
        -- Existing partitions made with another interval keep their bounds: fill around them.
        hi := least(hi, coalesce((SELECT min(from_time) FROM bemi._partitions() WHERE from_time > lo), hi));
        BEGIN
            actions := actions || bemi._make_partition(lo, hi);
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            actions := actions || format('could not lock bemi.changes to make a partition for [%s, %s); trying again later', lo, hi);
            EXIT;
        END;
        lo := hi;
    END LOOP;

    IF cfg.retention IS NOT NULL THEN
        -- Old changes in the default partition (from before retention was set up): in slices of
        -- the oldest ids, so that one round stays short, with anchors where the chain is cut.
        IF EXISTS (SELECT 1 FROM bemi.changes_default WHERE committed_at < cutoff) THEN
            PERFORM bemi._trail_starts_at(cutoff);
            SELECT max(s.id) INTO upto
              FROM (SELECT d.id FROM bemi.changes_default d WHERE d.committed_at < cutoff ORDER BY d.id LIMIT 100000) s;
            PERFORM bemi._cut_chain('bemi.changes_default', upto, cutoff);
            DELETE FROM bemi.changes_default WHERE committed_at < cutoff AND id <= upto;
            GET DIAGNOSTICS n = ROW_COUNT;
            actions := actions || format('deleted %s changes older than %s from bemi.changes_default', n, cutoff);
            IF n = 100000 THEN
                next_in := '1 second';
            END IF;
        END IF;
        -- The contexts of what retention took (bemi.contexts), once no change before the cutoff is left.
        IF NOT EXISTS (SELECT 1 FROM bemi.changes WHERE committed_at < cutoff) THEN
            DELETE FROM bemi.contexts WHERE committed_at < cutoff;
        END IF;
    END IF;
END $$;

-- Changes before `at` are going: time travel starts there now, and no table can be rebuilt from
-- the trail alone (their first rows may be in what is dropped).
CREATE FUNCTION bemi._trail_starts_at(at timestamptz) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE bemi.tracking
       SET started_at = at,
           nonempty_tables = ARRAY(SELECT t.name FROM bemi._user_tables() t WHERE NOT t.is_partition)
     WHERE started_at < at
$$;

-- Turn retention on, change it, or (retention NULL) keep changes for ever in partitions.
CREATE FUNCTION @extschema@.bemi_set_retention(retention interval, partition_interval interval DEFAULT '1 day')
RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF partition_interval IS NULL THEN
        RAISE EXCEPTION 'partition_interval must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Use bemi_reset_retention() to stop managing partitions.';
    END IF;
    IF partition_interval < interval '1 second' THEN
        RAISE EXCEPTION 'partition_interval must be at least 1 second, not %', partition_interval
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF date_trunc('month', partition_interval) NOT IN (interval '0', partition_interval) THEN
        RAISE EXCEPTION 'partition_interval % mixes months with days or hours', partition_interval
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use whole months (''1 month'') or a fixed length (''7 days'').';
    END IF;
    IF retention <= interval '0' THEN
        RAISE EXCEPTION 'retention must be positive, not %', retention USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass NULL to keep changes for ever.';
    END IF;
    IF retention < partition_interval THEN
        RAISE EXCEPTION 'retention % is shorter than partition_interval %', retention, partition_interval
            USING ERRCODE = 'invalid_parameter_value',
            DETAIL = 'Whole partitions are dropped: a partition is kept until all of it is older than the retention.',
            HINT = 'Use a shorter partition_interval.';
    END IF;
    INSERT INTO bemi.retention (retention, partition_interval) VALUES (retention, partition_interval)
        ON CONFLICT (singleton) DO UPDATE
        SET retention = excluded.retention, partition_interval = excluded.partition_interval, updated_at = now();
    RETURN QUERY SELECT unnest((bemi._maintain_changes(now())).actions);
END $$;
COMMENT ON FUNCTION @extschema@.bemi_set_retention(interval, interval) IS
    'Partition bemi.changes by committed_at and drop changes older than retention (NULL: keep them)';

CREATE FUNCTION @extschema@.bemi_reset_retention() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM bemi.retention;
$$;
COMMENT ON FUNCTION @extschema@.bemi_reset_retention() IS
    'Stop making and dropping partitions; existing partitions stay, new changes go to bemi.changes_default';

-- Run a round of upkeep now (the worker does it on its own).
CREATE FUNCTION @extschema@.bemi_maintain_changes() RETURNS SETOF text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT unnest((bemi._maintain_changes(now())).actions);
$$;
COMMENT ON FUNCTION @extschema@.bemi_maintain_changes() IS
    'Make the partitions bemi.changes needs now and apply the retention; returns what it did';

-- The partitions of the trail, oldest first.
CREATE FUNCTION @extschema@.bemi_partitions(OUT partition_name text, OUT from_time timestamptz, OUT to_time timestamptz,
                                OUT bytes bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'bemi.changes_default', NULL::timestamptz, NULL::timestamptz, pg_total_relation_size('bemi.changes_default')
    UNION ALL
    SELECT part::text, from_time, to_time, pg_total_relation_size(part) FROM bemi._partitions()
$$;
COMMENT ON FUNCTION @extschema@.bemi_partitions() IS 'The partitions of bemi.changes, with their ranges and sizes';

REVOKE ALL ON FUNCTION @extschema@.bemi_set_retention(interval, interval), @extschema@.bemi_reset_retention(),
    @extschema@.bemi_maintain_changes(), @extschema@.bemi_partitions(), bemi._maintain_changes(timestamptz), bemi._make_partition(timestamptz, timestamptz),
    bemi._trail_starts_at(timestamptz), bemi._partitions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.bemi_partitions() TO bemi_reader;
