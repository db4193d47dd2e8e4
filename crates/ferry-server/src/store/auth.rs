//! Users, API tokens, join tokens and issued host certificates.
//!
//! Only hashes of secrets are stored. Every check that must not race (redeeming a
//! single-use join token, removing what might be the last admin) runs in one
//! `BEGIN IMMEDIATE` transaction.

use chrono::{DateTime, Utc};
use ferry_api::{Role, User};
use ferry_pki::token::digests_equal;
use ferry_pki::CertInfo;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{parse_ts, ts, Store, StoreError, R};

/// What redeeming a join token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRedeem {
    /// The token was good and is now spent: issue for this host.
    Host(String),
    /// Why not, in words for the joining operator.
    Refused(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRemoval {
    Removed,
    NotFound,
    /// Removing the last admin would lock everyone out of user and host management.
    LastAdmin,
}

fn role_of(s: &str) -> R<Role> {
    s.parse()
        .map_err(|e: String| StoreError::Corrupt(format!("user role: {e}")))
}

impl Store {
    /// Adds a user with its first token; false if the name is taken.
    pub fn add_user(
        &self,
        name: &str,
        role: Role,
        token_id: &str,
        secret_hash: &str,
        now: DateTime<Utc>,
    ) -> R<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let added = tx.execute(
            "INSERT OR IGNORE INTO users (name, role, created_at) VALUES (?1, ?2, ?3)",
            params![name, role.to_string(), ts(&now)],
        )? == 1;
        if added {
            tx.execute(
                "INSERT INTO api_tokens (id, user, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![token_id, name, secret_hash, ts(&now)],
            )?;
        }
        tx.commit()?;
        Ok(added)
    }

    /// A further token for an existing user; false if there is no such user.
    pub fn add_api_token(
        &self,
        user: &str,
        token_id: &str,
        secret_hash: &str,
        now: DateTime<Utc>,
    ) -> R<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: Option<String> = tx
            .query_row("SELECT name FROM users WHERE name = ?1", [user], |r| {
                r.get(0)
            })
            .optional()?;
        if exists.is_none() {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO api_tokens (id, user, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![token_id, user, secret_hash, ts(&now)],
        )?;
        tx.commit()?;
        Ok(true)
    }

    pub fn users(&self) -> R<Vec<User>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT u.name, u.role, u.created_at,
                    (SELECT COUNT(*) FROM api_tokens t WHERE t.user = u.name)
             FROM users u ORDER BY u.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, u32>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, created, tokens) = row?;
            out.push(User {
                name,
                role: role_of(&role)?,
                created_at: parse_ts(&created)?,
                tokens,
            });
        }
        Ok(out)
    }

    pub fn user(&self, name: &str) -> R<Option<User>> {
        Ok(self.users()?.into_iter().find(|u| u.name == name))
    }

    /// Removes a user and its tokens, refusing to remove the last admin.
    pub fn remove_user(&self, name: &str) -> R<UserRemoval> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let role: Option<String> = tx
            .query_row("SELECT role FROM users WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(role) = role else {
            return Ok(UserRemoval::NotFound);
        };
        if role_of(&role)? == Role::Admin {
            let admins: i64 =
                tx.query_row("SELECT COUNT(*) FROM users WHERE role = 'admin'", [], |r| {
                    r.get(0)
                })?;
            if admins <= 1 {
                return Ok(UserRemoval::LastAdmin);
            }
        }
        tx.execute("DELETE FROM api_tokens WHERE user = ?1", [name])?;
        tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(UserRemoval::Removed)
    }

    /// The user a token belongs to, if the token is known and its secret matches.
    pub fn user_for_token(&self, token_id: &str, secret_hash: &str) -> R<Option<(String, Role)>> {
        let conn = self.conn();
        let row: Option<(String, String, String)> = conn
            .query_row(
                "SELECT t.secret_hash, u.name, u.role FROM api_tokens t
                 JOIN users u ON u.name = t.user WHERE t.id = ?1",
                [token_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match row {
            Some((stored, name, role)) if digests_equal(&stored, secret_hash) => {
                Ok(Some((name, role_of(&role)?)))
            }
            _ => Ok(None),
        }
    }

    pub fn add_join_token(
        &self,
        id: &str,
        host: &str,
        secret_hash: &str,
        expires_at: DateTime<Utc>,
        created_by: &str,
    ) -> R<()> {
        self.conn().execute(
            "INSERT INTO join_tokens (id, host, secret_hash, expires_at, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, host, secret_hash, ts(&expires_at), created_by],
        )?;
        Ok(())
    }

    /// Spends a join token: once, before it expires, only with its secret.
    pub fn redeem_join_token(
        &self,
        id: &str,
        secret_hash: &str,
        now: DateTime<Utc>,
    ) -> R<JoinRedeem> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, String, String, Option<String>)> = tx
            .query_row(
                "SELECT host, secret_hash, expires_at, used_at FROM join_tokens WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let refused = |why: &str| Ok(JoinRedeem::Refused(why.to_string()));
        let Some((host, stored, expires, used)) = row else {
            return refused("unknown join token");
        };
        if !digests_equal(&stored, secret_hash) {
            return refused("unknown join token");
        }
        if used.is_some() {
            return refused("this join token was already used (they are single-use)");
        }
        if parse_ts(&expires)? <= now {
            return refused(
                "this join token has expired; make a new one with `ferry host join-token`",
            );
        }
        tx.execute(
            "UPDATE join_tokens SET used_at = ?2 WHERE id = ?1",
            params![id, ts(&now)],
        )?;
        tx.commit()?;
        Ok(JoinRedeem::Host(host))
    }

    /// Records a certificate issued to `host` by the CA whose SHA-256 is `ca`.
    pub fn record_host_cert(
        &self,
        host: &str,
        info: &CertInfo,
        ca: &str,
        now: DateTime<Utc>,
    ) -> R<()> {
        self.conn().execute(
            "INSERT INTO host_certs (fingerprint, host, serial, not_after, issued_at, ca)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                info.fingerprint,
                host,
                info.serial,
                info.not_after,
                ts(&now),
                ca
            ],
        )?;
        Ok(())
    }

    /// Registered hosts that hold no live certificate from the CA `ca`: what a CA
    /// rotation still waits for.
    pub fn hosts_without_cert_from(&self, ca: &str, now: DateTime<Utc>) -> R<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT h.name FROM hosts h WHERE NOT EXISTS (
                 SELECT 1 FROM host_certs c WHERE c.host = h.name AND c.ca = ?1
                 AND c.revoked_at IS NULL AND c.not_after > ?2)
             ORDER BY h.name",
        )?;
        let rows = stmt.query_map(params![ca, now.timestamp()], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Whether `fingerprint` is a certificate issued to `host`, not revoked, not expired.
    pub fn host_cert_valid(&self, host: &str, fingerprint: &str, now: DateTime<Utc>) -> R<bool> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM host_certs WHERE fingerprint = ?1 AND host = ?2
             AND revoked_at IS NULL AND not_after > ?3",
            params![fingerprint, host, now.timestamp()],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Whether `host` holds any certificate that is still good.
    pub fn host_has_live_cert(&self, host: &str, now: DateTime<Utc>) -> R<bool> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM host_certs WHERE host = ?1 AND revoked_at IS NULL
             AND not_after > ?2",
            params![host, now.timestamp()],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Revokes every certificate of `host` and forgets the host; returns how many
    /// certificates were revoked.
    pub fn remove_host(&self, host: &str, now: DateTime<Utc>) -> R<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revoked = tx.execute(
            "UPDATE host_certs SET revoked_at = ?2 WHERE host = ?1 AND revoked_at IS NULL",
            params![host, ts(&now)],
        )?;
        // Unused join tokens for the host go too: removing a host must not leave a way
        // back in that nobody remembers.
        tx.execute(
            "UPDATE join_tokens SET used_at = ?2 WHERE host = ?1 AND used_at IS NULL",
            params![host, ts(&now)],
        )?;
        tx.execute("DELETE FROM hosts WHERE name = ?1", [host])?;
        tx.commit()?;
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn a_join_token_is_spent_once_and_not_after_expiry() {
        let (_d, s) = store();
        let now = Utc::now();
        s.add_join_token("t1", "a", "h1", now + Duration::minutes(5), "admin")
            .unwrap();
        assert!(matches!(
            s.redeem_join_token("t1", "wrong", now).unwrap(),
            JoinRedeem::Refused(_)
        ));
        assert_eq!(
            s.redeem_join_token("t1", "h1", now).unwrap(),
            JoinRedeem::Host("a".into())
        );
        assert!(matches!(
            s.redeem_join_token("t1", "h1", now).unwrap(),
            JoinRedeem::Refused(r) if r.contains("already used")
        ));
        s.add_join_token("t2", "b", "h2", now, "admin").unwrap();
        assert!(matches!(
            s.redeem_join_token("t2", "h2", now).unwrap(),
            JoinRedeem::Refused(r) if r.contains("expired")
        ));
    }

    #[test]
    fn the_last_admin_cannot_be_removed() {
        let (_d, s) = store();
        let now = Utc::now();
        assert!(s.add_user("root", Role::Admin, "i1", "h1", now).unwrap());
        assert!(!s.add_user("root", Role::Viewer, "i2", "h2", now).unwrap());
        assert!(s.add_user("view", Role::Viewer, "i3", "h3", now).unwrap());
        assert_eq!(s.remove_user("root").unwrap(), UserRemoval::LastAdmin);
        assert_eq!(s.remove_user("view").unwrap(), UserRemoval::Removed);
        assert_eq!(s.user_for_token("i3", "h3").unwrap(), None);
        assert_eq!(
            s.user_for_token("i1", "h1").unwrap(),
            Some(("root".into(), Role::Admin))
        );
        assert_eq!(s.user_for_token("i1", "hX").unwrap(), None);
    }

    #[test]
    fn a_removed_hosts_certificates_are_revoked() {
        let (_d, s) = store();
        let now = Utc::now();
        let info = CertInfo {
            identity: None,
            serial: "01".into(),
            fingerprint: "f1".into(),
            not_before: now.timestamp() - 10,
            not_after: now.timestamp() + 3600,
            is_ca: false,
        };
        s.record_host_cert("a", &info, "ca1", now).unwrap();
        assert!(s.host_cert_valid("a", "f1", now).unwrap());
        assert!(
            !s.host_cert_valid("b", "f1", now).unwrap(),
            "another host's name"
        );
        assert!(!s
            .host_cert_valid("a", "f1", now + Duration::hours(2))
            .unwrap());
        assert_eq!(s.remove_host("a", now).unwrap(), 1);
        assert!(!s.host_cert_valid("a", "f1", now).unwrap());
        assert!(!s.host_has_live_cert("a", now).unwrap());
    }
}
