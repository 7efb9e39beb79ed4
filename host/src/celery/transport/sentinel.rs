//! Redis Sentinel URLs, as kombu writes them (issue 25 step 6):
//! `sentinel://[:PASSWORD@]HOST:PORT[/DB];sentinel://HOST2:PORT;...` with
//! the master's name as kombu's transport option `master_name`, given here
//! in the URL's query (`...;sentinel://h3:26379?master_name=mymaster`) or
//! with `--master-name` on the command line.
//!
//! The URL resolves to the current master's `redis://` URL (its password
//! and database from the sentinel URL, as kombu's `SentinelChannel` uses
//! them): every [`super::redis::Link`] resolves it again each time it
//! reconnects, so after a failover the next connection reaches the new
//! master. The sentinels themselves are asked without a password.

use std::time::Duration;

use super::BrokerError;

/// True for a `sentinel://` URL.
pub fn is_sentinel(url: &str) -> bool {
    url.get(..11)
        .is_some_and(|s| s.eq_ignore_ascii_case("sentinel://"))
}

/// A parsed sentinel URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// The sentinels' `host:port`, in order.
    pub sentinels: Vec<String>,
    /// The monitored master's name.
    pub master_name: String,
    /// The master's password (from the first URL that has one).
    pub password: Option<String>,
    /// The database index (from the first URL that has one; 0).
    pub db: i64,
}

/// Parses `sentinel://...;sentinel://...[?master_name=NAME]`.
pub fn parse(url: &str) -> Result<SentinelUrl, BrokerError> {
    let bad = |why: String| BrokerError::Url {
        url: super::redact(url),
        why,
    };
    let mut out = SentinelUrl {
        sentinels: Vec::new(),
        master_name: String::new(),
        password: None,
        db: 0,
    };
    for part in url.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        if !is_sentinel(part) {
            return Err(bad(format!("{part:?} is not a sentinel:// URL")));
        }
        let rest = &part[11..];
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        for kv in query.into_iter().flat_map(|q| q.split('&')) {
            if let Some(name) = kv.strip_prefix("master_name=") {
                out.master_name = name.to_string();
            }
        }
        let (auth, hostpath) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        if let Some(a) = auth {
            let pw = a.split_once(':').map_or(a, |(_, p)| p);
            if !pw.is_empty() && out.password.is_none() {
                out.password = Some(pw.to_string());
            }
        }
        let (host, path) = match hostpath.split_once('/') {
            Some((h, p)) => (h, p),
            None => (hostpath, ""),
        };
        if host.is_empty() {
            return Err(bad("a sentinel without a host".into()));
        }
        let host = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:26379")
        };
        if !path.is_empty() {
            out.db = path
                .parse::<i64>()
                .ok()
                .filter(|d| (0..=1_000_000).contains(d))
                .ok_or_else(|| bad(format!("database {path:?} is not a number")))?;
        }
        out.sentinels.push(host);
    }
    if out.sentinels.is_empty() {
        return Err(bad("no sentinel".into()));
    }
    if out.master_name.is_empty() {
        return Err(bad(
            "no master name: add ?master_name=NAME (kombu's transport option) or --master-name"
                .into(),
        ));
    }
    Ok(out)
}

/// `url` with `master_name` set when it has none (the CLI's
/// `--master-name`); any other URL unchanged.
pub fn with_master_name(url: &str, name: Option<&str>) -> String {
    match name {
        Some(n) if is_sentinel(url) && !url.contains("master_name=") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}master_name={n}")
        }
        _ => url.to_string(),
    }
}

/// Asks the sentinels, in order, for the master's address; returns the
/// master's `redis://` URL.
pub fn master_url(url: &str) -> Result<String, BrokerError> {
    let s = parse(url)?;
    let mut last = String::from("no sentinel answered");
    for addr in &s.sentinels {
        let client = match redis::Client::open(format!("redis://{addr}")) {
            Ok(c) => c,
            Err(e) => {
                last = format!("{addr}: {e}");
                continue;
            }
        };
        let got = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&s.master_name)
                    .query::<Option<(String, u16)>>(&mut c)
            });
        match got {
            Ok(Some((host, port))) => {
                let auth = s
                    .password
                    .as_ref()
                    .map(|p| format!(":{p}@"))
                    .unwrap_or_default();
                return Ok(format!("redis://{auth}{host}:{port}/{}", s.db));
            }
            Ok(None) => last = format!("{addr} knows no master {:?}", s.master_name),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(BrokerError::Reply(format!(
        "Redis Sentinel: cannot find master {:?}: {last}",
        s.master_name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kombus_sentinel_urls_parse() {
        let s =
            parse("sentinel://:pw@h1:26379/2;sentinel://h2:26380;sentinel://h3?master_name=mym")
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.sentinels, ["h1:26379", "h2:26380", "h3:26379"]);
        assert_eq!(s.master_name, "mym");
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(s.db, 2);
        let e = parse("sentinel://h1:26379").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("master_name")));
        assert!(parse("sentinel://h1;redis://h2?master_name=x").is_err());
        assert_eq!(
            with_master_name("sentinel://a:1;sentinel://b:2", Some("m")),
            "sentinel://a:1;sentinel://b:2?master_name=m"
        );
        assert_eq!(with_master_name("redis://a", Some("m")), "redis://a");
        assert!(is_sentinel("SENTINEL://x"));
    }
}
