//! `ferry ca`, `ferry user`, `ferry whoami`, `ferry host join-token|remove`.

use ferry_api::*;

use crate::cli::{CaCmd, JsonFlag, UserCmd};
use crate::connection::{client, write_config, ConnOpts, FileConfig};
use crate::exit::{CliError, CliResult};
use crate::output::{print_json, print_table};

pub async fn ca(conn: &ConnOpts, cmd: CaCmd) -> CliResult {
    match cmd {
        CaCmd::Init {
            data_dir,
            admin,
            write_config: config_path,
            server_url,
            json,
        } => {
            let data_dir = if data_dir.is_absolute() {
                data_dir
            } else {
                std::env::current_dir()
                    .map_err(|e| {
                        CliError::failed(format!("cannot read the current directory: {e}"))
                    })?
                    .join(data_dir)
            };
            // The server holds the data directory's lock while it runs; so do we, so a
            // running server's database is never written behind its back.
            let _lock = ferry_server::core::DataDirLock::acquire(&data_dir, "ferry ca init")
                .map_err(|e| CliError::refused(e.to_string()))?;
            let report = ferry_server::pki::init(&data_dir, &admin)
                .map_err(|e| CliError::refused(e.to_string()))?;
            if let Some(path) = &config_path {
                write_config(
                    path,
                    &FileConfig {
                        server: Some(server_url.clone()),
                        ca: Some(report.ca_path.clone()),
                        token: Some(report.admin_token.clone()),
                    },
                )?;
            }
            if json.json {
                return print_json(&serde_json::json!({
                    "ca_fingerprint": report.ca_fingerprint,
                    "ca_path": report.ca_path,
                    "admin": report.admin,
                    "admin_token": report.admin_token,
                    "config": config_path,
                }));
            }
            println!("cluster CA made: {}", report.ca_path.display());
            println!("CA SHA-256:      {}", report.ca_fingerprint);
            println!("admin user:      {}", report.admin);
            println!("admin token:     {}", report.admin_token);
            println!("                 (shown once; the server keeps only its hash)");
            match &config_path {
                Some(p) => println!("client config:   {} (0600)", p.display()),
                None => println!(
                    "use it with:     export FERRY_CA={} FERRY_TOKEN=<the token>",
                    report.ca_path.display()
                ),
            }
            println!(
                "next:            ferry server --data-dir {}",
                data_dir.display()
            );
            Ok(())
        }
        CaCmd::Rotate {
            finish,
            status,
            json,
        } => {
            let c = client(conn)?;
            let r = if status {
                c.ca_rotation().await?
            } else {
                c.rotate_ca(&RotateRequest { finish }).await?
            };
            if json.json {
                return print_json(&r);
            }
            println!("CA rotation:  {}", r.state);
            println!("signing CA:   {}", r.signing);
            for t in &r.trusted {
                println!("trusted CA:   {t}");
            }
            if r.state == "overlapping" {
                println!(
                    "operators:    before --finish, make the CA file your CLI trusts the server's \
                     <data dir>/pki/ca.crt (it now holds both CAs)"
                );
                if r.pending_hosts.is_empty() {
                    println!("every host holds a certificate from the new CA: `ferry ca rotate --finish`");
                } else {
                    println!(
                        "pending:      {} (agents renew within a few heartbeats; run --status to follow)",
                        r.pending_hosts.join(", ")
                    );
                }
            }
            Ok(())
        }
        CaCmd::Show(json) => {
            let b = client(conn)?.ca_bundle().await?;
            if json.json {
                return print_json(&b);
            }
            for f in &b.fingerprints {
                println!("CA SHA-256: {f}");
            }
            Ok(())
        }
    }
}

pub async fn user(conn: &ConnOpts, cmd: UserCmd) -> CliResult {
    let c = client(conn)?;
    match cmd {
        UserCmd::Add { name, role, json } => {
            let t = c.add_user(&CreateUserRequest { name, role }).await?;
            print_token(&t, json)
        }
        UserCmd::Token { name, json } => {
            let t = c.new_user_token(&name).await?;
            print_token(&t, json)
        }
        UserCmd::List(json) => {
            let users = c.users().await?;
            if json.json {
                return print_json(&users);
            }
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|u| {
                    vec![
                        u.name.clone(),
                        u.role.to_string(),
                        u.tokens.to_string(),
                        u.created_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    ]
                })
                .collect();
            print_table(&["NAME", "ROLE", "TOKENS", "CREATED"], &rows);
            Ok(())
        }
        UserCmd::Remove { name, json } => {
            let v = c.remove_user(&name).await?;
            if json.json {
                return print_json(&v);
            }
            println!("user {name} removed with its tokens");
            Ok(())
        }
    }
}

fn print_token(t: &UserToken, json: JsonFlag) -> CliResult {
    if json.json {
        return print_json(t);
    }
    println!("user {} ({})", t.user.name, t.user.role);
    println!("token: {}", t.token);
    println!("(shown once; the server keeps only its hash)");
    Ok(())
}

pub async fn whoami(conn: &ConnOpts, json: JsonFlag) -> CliResult {
    let (server, _) = conn.resolve()?;
    let w = client(conn)?.whoami().await?;
    if json.json {
        return print_json(&w);
    }
    match w.role {
        Some(r) => println!("{} ({r}) at {server}", w.actor),
        None => println!("{} at {server}", w.actor),
    }
    Ok(())
}

pub async fn join_token(
    conn: &ConnOpts,
    host: &str,
    ttl_s: Option<u64>,
    json: JsonFlag,
) -> CliResult {
    let (server, _) = conn.resolve()?;
    let t = client(conn)?
        .join_token(&JoinTokenRequest {
            host: host.to_string(),
            ttl_s,
        })
        .await?;
    if json.json {
        return print_json(&t);
    }
    println!(
        "join token for host {} (single use, valid until {}):",
        t.host,
        t.expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    println!("{}", t.token);
    println!();
    println!("on host {}:", t.host);
    println!(
        "  FERRY_JOIN_TOKEN=<the token> ferry agent --name {} --server {server} ...",
        t.host
    );
    Ok(())
}

pub async fn remove_host(conn: &ConnOpts, host: &str, json: JsonFlag) -> CliResult {
    let v = client(conn)?.remove_host(host).await?;
    if json.json {
        return print_json(&v);
    }
    println!(
        "removed {}",
        v.get("deleted").and_then(|d| d.as_str()).unwrap_or(host)
    );
    Ok(())
}
