//! Open mode: trusts the query string (`/ws?user=42&device=phone&channels=a,b`). For
//! development, tests, and backends that authenticate before the gateway; ringcast refuses to
//! start in it on a non-loopback listener unless `--insecure-open-identity true` says so.

use super::{query, AuthError, Authenticator, Identity, Refreshed, UpgradeRequest};

#[derive(Debug)]
pub(crate) struct OpenMode {
    pub(crate) max_channels: usize,
}

impl Authenticator for OpenMode {
    fn authenticate(&self, req: &UpgradeRequest<'_>, _now_ms: u64) -> Result<Identity, AuthError> {
        let q = query::parse(req.query)?;
        if q.asked().count() > self.max_channels {
            return Err(AuthError::BadQuery(format!(
                "too many channels: at most {}",
                self.max_channels
            )));
        }
        if q.device.is_some() && q.user.is_none() {
            return Err(AuthError::BadQuery("device given without user".into()));
        }
        Ok(Identity {
            user: q.user,
            device: q.device,
            channels: q.channels,
            resume: q.resume,
            session: q.session,
            ..Identity::default()
        })
    }

    fn refresh(&self, _token: &str, _now_ms: u64) -> Result<Refreshed, AuthError> {
        Err(AuthError::NoTokens)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proto::client::Position;

    fn id(m: &OpenMode, q: Option<&str>) -> Result<Identity, String> {
        m.authenticate(&UpgradeRequest { query: q, bearer: None }, 0).map_err(|e| e.reason())
    }

    #[test]
    fn open_mode_reads_the_query() {
        let m = OpenMode { max_channels: 2 };
        let got = id(&m, Some("user=u%4042&device=phone&channels=a,b,a&x=1")).unwrap();
        assert_eq!(got.user.as_deref(), Some("u@42"));
        assert_eq!(got.device.as_deref(), Some("phone"));
        assert_eq!(got.channels.len(), 2);
        assert_eq!(got.grant, None, "open mode allows any channel");
        assert_eq!(id(&m, None).unwrap(), Identity::default());
        assert!(id(&m, Some("user=a%20b")).unwrap_err().contains("user"));
        assert!(id(&m, Some("channels=a,b,c")).unwrap_err().contains("at most 2"));
        assert!(id(&m, Some("device=x")).is_err());
        assert!(id(&m, Some("user=%zz")).is_err());
        // {"channel:a":{"epoch":1,"seq":2}} in base64url.
        let got = id(&m, Some("resume=eyJjaGFubmVsOmEiOnsiZXBvY2giOjEsInNlcSI6Mn19")).unwrap();
        assert_eq!(got.resume, [(Arc::from("a"), Position { epoch: 1, seq: 2 })]);
        assert!(id(&m, Some("resume=!!")).unwrap_err().contains("base64url"));
        assert!(id(&m, Some("channels=a,b&resume=eyJjaGFubmVsOmMiOnsiZXBvY2giOjEsInNlcSI6Mn19"))
            .is_err());
        let e = m.authenticate(&UpgradeRequest { query: Some("user=%zz"), bearer: None }, 0);
        assert_eq!(
            e.unwrap_err().handshake(),
            crate::proto::handshake::HandshakeError::BadIdentity
        );
        assert_eq!(m.refresh("x", 0), Err(AuthError::NoTokens));
    }
}
