-- The host of a referrer, for the stats' `referrer_hosts`: V16's pattern ended a host at its
-- first colon, so an IPv6 literal (`https://[2001:db8::1]:8443/`) was listed as `[2001`, and
-- `example.com.` (the root's dot) apart from `example.com`. Read at query time only, so the
-- stats of clicks stored before are grouped the new way too; nothing is rewritten.
CREATE OR REPLACE FUNCTION referrer_host(referrer TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT nullif(rtrim(lower(coalesce(
        substring(referrer FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?(\[[0-9A-Fa-f:.]+\])'),
        substring(referrer FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#:]+)')
    )), '.'), '')
$$;
