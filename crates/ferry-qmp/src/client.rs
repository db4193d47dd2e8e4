//! The connection: greeting, capability negotiation, a reader task that dispatches replies by `id`
//! and fans events out, and a writer task that owns the socket's write half.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, trace, warn, Instrument};

use crate::error::{snippet, QmpError};
use crate::events::QmpEvent;
use crate::types::{Greeting, VersionInfo};

/// How often a QMP socket that is not there yet is tried again.
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(5);

/// Default per-call timeout: long enough for slow commands on a loaded host, short enough that a
/// hung QEMU cannot block a caller forever.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Default number of events buffered per subscriber before it starts lagging.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// Connection options.
#[derive(Debug, Clone)]
pub struct QmpOptions {
    /// Default timeout of each call (also bounds the greeting and the capability negotiation).
    pub command_timeout: Duration,
    /// Events buffered per [`QmpClient::events`] subscriber; a slower subscriber loses the oldest
    /// (its `recv` reports `Lagged`).
    pub event_capacity: usize,
    /// If set, keep retrying to connect (the socket appears a moment after QEMU starts) until
    /// this much time has passed.
    pub connect_retry: Option<Duration>,
    /// Negotiate QMP's out-of-band capability, so [`QmpClient::execute_oob`] commands run
    /// on QEMU's monitor thread even while its main loop is stuck (a post-copy destination
    /// whose guest waits for a page). Fails to connect if QEMU does not offer it.
    pub oob: bool,
}

impl Default for QmpOptions {
    fn default() -> Self {
        QmpOptions {
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            connect_retry: None,
            oob: false,
        }
    }
}

/// A QMP connection to one QEMU process.
///
/// Cheap to clone: all clones share one connection, and calls from many tasks run concurrently
/// (QEMU answers them in order, each caller gets its own answer by `id`). The connection is
/// closed when the last clone is dropped or when QEMU closes it; after that every call fails with
/// [`QmpError::Disconnected`].
#[derive(Clone)]
pub struct QmpClient {
    inner: Arc<Inner>,
    timeout: Duration,
}

struct Inner {
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    next_id: AtomicU64,
    greeting: Greeting,
    reader: tokio::task::AbortHandle,
    oob: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop reading; the writer task sees its channel close and shuts
        // the socket down.
        self.reader.abort();
        self.shared.close("client dropped");
    }
}

/// State shared by the handles and the reader/writer tasks.
struct Shared {
    path: PathBuf,
    state: Mutex<State>,
    closed: watch::Sender<bool>,
}

struct State {
    open: bool,
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// `None` once closed, so that subscribers' `recv` ends with `Closed`.
    events: Option<broadcast::Sender<QmpEvent>>,
}

/// What QEMU answered: the `return` value, or the `error` object's class and description.
type Reply = Result<Value, (String, String)>;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn disconnected(&self) -> QmpError {
        QmpError::Disconnected {
            path: self.path.clone(),
        }
    }

    /// Marks the connection closed (idempotent): pending callers are woken up (their oneshot
    /// senders are dropped, which they report as `Disconnected`), event subscribers see `Closed`.
    fn close(&self, why: &str) {
        let (pending, was_open) = {
            let mut st = self.lock();
            let was_open = st.open;
            st.open = false;
            st.events = None;
            (std::mem::take(&mut st.pending), was_open)
        };
        if was_open {
            debug!(
                path = %self.path.display(),
                pending = pending.len(),
                "QMP connection closed: {why}"
            );
        }
        drop(pending);
        self.closed.send_replace(true);
    }

    fn dispatch(&self, line: &[u8]) {
        match parse_message(line) {
            Ok(Incoming::Reply { id, reply }) => {
                let Some(id) = id else {
                    // QEMU only omits the id when it could not parse our request at all.
                    warn!(
                        path = %self.path.display(),
                        message = %snippet(&String::from_utf8_lossy(line)),
                        "QMP reply without id"
                    );
                    return;
                };
                let waiter = self.lock().pending.remove(&id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(reply);
                    }
                    None => debug!(id, "QMP reply for a call nobody waits for (timed out?)"),
                }
            }
            Ok(Incoming::Event(event)) => {
                debug!(event = %event.event, "QMP event");
                trace!(data = %snippet(&event.data.to_string()), "QMP event data");
                if let Some(tx) = &self.lock().events {
                    // An error only means nobody is subscribed.
                    let _ = tx.send(event);
                }
            }
            Err(reason) => warn!(
                path = %self.path.display(),
                message = %snippet(&String::from_utf8_lossy(line)),
                "ignoring unexpected QMP message: {reason}"
            ),
        }
    }
}

/// A message from QEMU, after the greeting.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    Reply { id: Option<u64>, reply: Reply },
    Event(QmpEvent),
}

/// Parses one line from QEMU. Pure, for unit tests.
pub(crate) fn parse_message(line: &[u8]) -> Result<Incoming, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut obj) = value else {
        return Err("not a JSON object".into());
    };
    let id = match obj.remove("id") {
        None => None,
        Some(Value::Number(n)) => Some(n.as_u64().ok_or("id is not an unsigned integer")?),
        Some(_) => return Err("id is not a number (not one of ours)".into()),
    };
    if let Some(ret) = obj.remove("return") {
        return Ok(Incoming::Reply { id, reply: Ok(ret) });
    }
    if let Some(err) = obj.remove("error") {
        let class = err
            .get("class")
            .and_then(Value::as_str)
            .unwrap_or("GenericError")
            .to_owned();
        let desc = err
            .get("desc")
            .and_then(Value::as_str)
            .unwrap_or("(no description)")
            .to_owned();
        return Ok(Incoming::Reply {
            id,
            reply: Err((class, desc)),
        });
    }
    if obj.contains_key("event") {
        let event: QmpEvent = serde_json::from_value(Value::Object(obj))
            .map_err(|e| format!("malformed event: {e}"))?;
        return Ok(Incoming::Event(event));
    }
    if obj.contains_key("QMP") {
        return Err("second greeting".into());
    }
    Err("neither a reply nor an event".into())
}

impl QmpClient {
    /// Connects to QEMU's QMP Unix socket (`-qmp unix:PATH,server=on,wait=off`), reads the
    /// greeting and leaves capability negotiation mode (`qmp_capabilities`).
    pub async fn connect(path: &Path) -> Result<QmpClient, QmpError> {
        QmpClient::connect_with(path, QmpOptions::default()).await
    }

    /// Like [`QmpClient::connect`], but retries while the socket does not exist or refuses
    /// connections (QEMU creates it a moment after it starts), for at most `timeout`.
    pub async fn connect_with_retry(path: &Path, timeout: Duration) -> Result<QmpClient, QmpError> {
        QmpClient::connect_with(
            path,
            QmpOptions {
                connect_retry: Some(timeout),
                ..QmpOptions::default()
            },
        )
        .await
    }

    /// Connects with explicit options.
    pub async fn connect_with(path: &Path, options: QmpOptions) -> Result<QmpClient, QmpError> {
        let io_err = |source| QmpError::Io {
            path: path.to_owned(),
            source,
        };
        let Some(retry_for) = options.connect_retry else {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(io_err)?;
            return QmpClient::from_stream(stream, path, options).await;
        };
        let deadline = Instant::now() + retry_for;
        loop {
            let error = match tokio::net::UnixStream::connect(path).await {
                Ok(stream) => return QmpClient::from_stream(stream, path, options).await,
                Err(e) => io_err(e),
            };
            if Instant::now() >= deadline {
                return Err(QmpError::ConnectTimeout {
                    path: path.to_owned(),
                    timeout: retry_for,
                    last: Box::new(error),
                });
            }
            trace!(path = %path.display(), "QMP socket not ready yet: {error}");
            // A failed connect to a path that is not there yet costs a syscall; the wait
            // is part of every QEMU start, a destination's among them (50 ms here cost a
            // migration 25 ms on average).
            tokio::time::sleep(CONNECT_RETRY_INTERVAL).await;
        }
    }

    /// Runs QMP over any byte stream (a Unix or TCP socket, or an in-memory pipe in tests).
    /// `label` names the peer in errors and logs.
    pub async fn from_stream<S>(
        stream: S,
        label: impl Into<PathBuf>,
        options: QmpOptions,
    ) -> Result<QmpClient, QmpError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let path = label.into();
        let (read_half, write_half) = tokio::io::split(stream);
        let mut reader = BufReader::new(read_half);

        // Greeting: {"QMP": {"version": {...}, "capabilities": [...]}}. QEMU can write an event
        // (e.g. RESUME of a VM started without -S) to a just-accepted connection before the
        // greeting: the monitor's "opened" handling runs on its own thread. Such early events are
        // skipped; anything else before the greeting is a protocol error.
        let mut line = Vec::new();
        let mut skipped_events = 0;
        let greeting = loop {
            line.clear();
            let n = tokio::time::timeout(
                options.command_timeout,
                read_bounded_line(&mut reader, &mut line, MAX_LINE_BYTES),
            )
            .await
            .map_err(|_| QmpError::Timeout {
                command: "(greeting)".into(),
                timeout: options.command_timeout,
            })?
            .map_err(|source| QmpError::Io {
                path: path.clone(),
                source,
            })?;
            if n == 0 {
                return Err(QmpError::Disconnected { path });
            }
            match parse_greeting(&line) {
                Ok(greeting) => break greeting,
                Err(_) if is_event(&line) && skipped_events < MAX_EVENTS_BEFORE_GREETING => {
                    skipped_events += 1;
                    debug!(path = %path.display(), "QMP event before the greeting skipped");
                }
                Err(reason) => {
                    return Err(QmpError::Protocol {
                        path: path.clone(),
                        reason,
                        snippet: snippet(&String::from_utf8_lossy(&line)),
                    })
                }
            }
        };
        debug!(
            path = %path.display(),
            version = %greeting.version.qemu,
            package = %greeting.version.package,
            "QMP greeting"
        );

        let (events, _) = broadcast::channel(options.event_capacity.max(1));
        let shared = Arc::new(Shared {
            path,
            state: Mutex::new(State {
                open: true,
                pending: HashMap::new(),
                events: Some(events),
            }),
            closed: watch::Sender::new(false),
        });
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let reader_task = tokio::spawn(reader_loop(reader, shared.clone()));
        tokio::spawn(writer_loop(write_half, outgoing_rx, shared.clone()));

        let client = QmpClient {
            inner: Arc::new(Inner {
                shared,
                outgoing,
                next_id: AtomicU64::new(1),
                greeting,
                reader: reader_task.abort_handle(),
                oob: options.oob,
            }),
            timeout: options.command_timeout,
        };
        if options.oob {
            if !client
                .inner
                .greeting
                .capabilities
                .iter()
                .any(|c| c == "oob")
            {
                return Err(QmpError::Protocol {
                    path: client.inner.shared.path.clone(),
                    reason: "out-of-band execution asked for but QEMU does not offer it".into(),
                    snippet: String::new(),
                });
            }
            client
                .execute_raw(
                    "qmp_capabilities",
                    Some(serde_json::json!({"enable": ["oob"]})),
                )
                .await?;
        } else {
            client.execute_raw("qmp_capabilities", None).await?;
        }
        Ok(client)
    }

    /// QEMU's version, from the greeting.
    pub fn version(&self) -> &VersionInfo {
        &self.inner.greeting.version
    }

    /// The greeting as QEMU sent it (version and offered capabilities, e.g. `oob`).
    pub fn greeting(&self) -> &Greeting {
        &self.inner.greeting
    }

    /// The socket path (or stream label) this client talks to.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// The timeout applied to each call made through this handle.
    pub fn command_timeout(&self) -> Duration {
        self.timeout
    }

    /// A handle on the same connection whose calls use another timeout (e.g. a longer one for a
    /// slow command, or a short one for a health probe).
    pub fn with_command_timeout(&self, timeout: Duration) -> QmpClient {
        QmpClient {
            inner: self.inner.clone(),
            timeout,
        }
    }

    /// False once QEMU closed the connection.
    pub fn is_connected(&self) -> bool {
        self.inner.shared.lock().open
    }

    /// Resolves when the connection is gone (QEMU exited or closed the socket). Returns at once if
    /// it already is.
    pub async fn closed(&self) {
        let mut rx = self.inner.shared.closed.subscribe();
        // Cannot fail: `self` keeps the sender alive.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Subscribes to QMP events, from now on (earlier events are not replayed). The receiver
    /// reports `RecvError::Closed` after the connection is gone (having delivered what was
    /// buffered), and `Lagged` if it fell more than the event capacity behind.
    ///
    /// To observe an event caused by a command, subscribe *before* sending the command.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        match &self.inner.shared.lock().events {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Sends `command` with optional `arguments` (a JSON object) and waits, at most for this
    /// handle's timeout, for QEMU's `return` value.
    pub async fn execute_raw(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_raw_timeout(command, arguments, self.timeout)
            .await
    }

    /// Runs `command` out of band (`exec-oob`): QEMU's monitor thread executes it at once,
    /// even while its main loop is busy. Only commands QEMU marks `allow-oob` qualify
    /// (`migrate-pause`, `migrate-recover`); the connection must have been opened with
    /// [`QmpOptions::oob`]. Keep such a connection free of in-band commands that could
    /// queue up behind a stuck main loop: QEMU stops reading a monitor with 8 pending.
    pub async fn execute_oob(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        if !self.inner.oob {
            return Err(QmpError::Protocol {
                path: self.inner.shared.path.clone(),
                reason: format!(
                    "{command}: this connection did not negotiate out-of-band execution"
                ),
                snippet: String::new(),
            });
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!("qmp-oob", command, id);
        self.send_and_wait(id, "exec-oob", command, arguments, self.timeout)
            .instrument(span)
            .await
    }

    /// [`QmpClient::execute_raw`] with an explicit timeout for this one call.
    pub async fn execute_raw_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!("qmp", command, id);
        self.send_and_wait(id, "execute", command, arguments, timeout)
            .instrument(span)
            .await
    }

    /// `how`: `execute`, or `exec-oob` for out-of-band commands.
    async fn send_and_wait(
        &self,
        id: u64,
        how: &str,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let shared = &self.inner.shared;
        let mut request = Map::new();
        request.insert(how.into(), Value::String(command.into()));
        if let Some(arguments) = arguments {
            trace!(arguments = %snippet(&arguments.to_string()), "QMP arguments");
            request.insert("arguments".into(), arguments);
        }
        request.insert("id".into(), Value::from(id));
        let mut line = serde_json::to_vec(&request).map_err(|source| QmpError::Encode {
            command: command.into(),
            source,
        })?;
        line.push(b'\n');

        let (tx, rx) = oneshot::channel();
        {
            let mut st = shared.lock();
            if !st.open {
                return Err(shared.disconnected());
            }
            st.pending.insert(id, tx);
        }
        // Removes our entry if we time out or our caller drops this future.
        let _pending = PendingGuard { shared, id };
        if self.inner.outgoing.send(line).is_err() {
            return Err(shared.disconnected());
        }

        let started = Instant::now();
        let reply = tokio::time::timeout(timeout, rx).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        match reply {
            Err(_) => {
                warn!(elapsed_ms, "QMP command timed out");
                Err(QmpError::Timeout {
                    command: command.into(),
                    timeout,
                })
            }
            Ok(Err(_)) => {
                debug!(elapsed_ms, "QMP connection closed before the reply");
                Err(shared.disconnected())
            }
            Ok(Ok(Ok(value))) => {
                debug!(elapsed_ms, "QMP command done");
                trace!(reply = %snippet(&value.to_string()), "QMP reply");
                Ok(value)
            }
            Ok(Ok(Err((class, desc)))) => {
                debug!(elapsed_ms, class, desc, "QMP command failed");
                Err(QmpError::Command {
                    command: command.into(),
                    class,
                    desc,
                })
            }
        }
    }

    /// Typed call: serializes `arguments` (must serialize to a JSON object) and deserializes the
    /// `return` value. Use it for commands this crate has no method for.
    pub async fn execute<A, R>(&self, command: &str, arguments: Option<&A>) -> Result<R, QmpError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let arguments = arguments
            .map(serde_json::to_value)
            .transpose()
            .map_err(|source| QmpError::Encode {
                command: command.into(),
                source,
            })?;
        let value = self.execute_raw(command, arguments).await?;
        decode(command, value)
    }
}

/// Deserializes a command's `return` value.
pub(crate) fn decode<R: DeserializeOwned>(command: &str, value: Value) -> Result<R, QmpError> {
    R::deserialize(&value).map_err(|source| QmpError::Decode {
        command: command.into(),
        source,
        snippet: snippet(&value.to_string()),
    })
}

struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

impl fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QmpClient")
            .field("path", &self.inner.shared.path)
            .field("qemu", &self.inner.greeting.version.qemu)
            .field("connected", &self.is_connected())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How many events a connection may carry before QEMU's greeting (see `from_stream`).
const MAX_EVENTS_BEFORE_GREETING: usize = 16;

fn is_event(line: &[u8]) -> bool {
    matches!(parse_message(line), Ok(Incoming::Event(_)))
}

pub(crate) fn parse_greeting(line: &[u8]) -> Result<Greeting, String> {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        #[serde(rename = "QMP")]
        qmp: Greeting,
    }
    serde_json::from_slice::<Wrapper>(line)
        .map(|w| w.qmp)
        .map_err(|e| format!("expected the QMP greeting: {e}"))
}

/// The longest QMP line accepted. QEMU's largest replies (`query-cpu-definitions`,
/// `query-named-block-nodes`) are a few hundred KiB; a peer that sends more without a
/// newline is not QEMU (or is broken), and reading on would grow memory without bound.
pub const MAX_LINE_BYTES: u64 = 16 << 20;

/// Reads one line (up to and including `\n`) of at most `max` bytes into `line`. A line
/// that reaches `max` without its newline is an error, not a truncated message.
pub(crate) async fn read_bounded_line<R>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: u64,
) -> std::io::Result<usize>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let n = (&mut *reader).take(max).read_until(b'\n', line).await?;
    if n as u64 >= max && line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a QMP line longer than {max} bytes"),
        ));
    }
    Ok(n)
}

async fn reader_loop<R>(mut reader: BufReader<R>, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin,
{
    let mut line = Vec::with_capacity(4096);
    let why = loop {
        line.clear();
        match read_bounded_line(&mut reader, &mut line, MAX_LINE_BYTES).await {
            Ok(0) => break "end of stream".to_owned(),
            Ok(_) => shared.dispatch(&line),
            Err(e) => break format!("read error: {e}"),
        }
    };
    shared.close(&why);
}

async fn writer_loop<W>(
    mut writer: W,
    mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) where
    W: AsyncWrite + Unpin,
{
    let mut closed = shared.closed.subscribe();
    loop {
        let message = tokio::select! {
            message = outgoing.recv() => message,
            // Stop writing once the reader saw the connection end.
            () = async { let _ = closed.wait_for(|closed| *closed).await; } => None,
        };
        let Some(message) = message else { break };
        let written = async {
            writer.write_all(&message).await?;
            writer.flush().await
        };
        if let Err(e) = written.await {
            shared.close(&format!("write error: {e}"));
            break;
        }
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn lines_are_bounded() {
        let mut r = BufReader::new(&b"{\"a\": 1}\nrest"[..]);
        let mut line = Vec::new();
        assert_eq!(read_bounded_line(&mut r, &mut line, 64).await.unwrap(), 9);
        assert_eq!(line, b"{\"a\": 1}\n");
        let long = [b'x'; 100];
        let mut r = BufReader::new(&long[..]);
        let mut line = Vec::new();
        let e = read_bounded_line(&mut r, &mut line, 64).await.unwrap_err();
        assert!(e.to_string().contains("longer than 64 bytes"), "{e}");
        // Exactly at the limit with its newline is fine.
        let mut exact = vec![b'x'; 63];
        exact.push(b'\n');
        let mut r = BufReader::new(&exact[..]);
        let mut line = Vec::new();
        assert_eq!(read_bounded_line(&mut r, &mut line, 64).await.unwrap(), 64);
    }

    #[test]
    fn parses_replies_errors_and_events() {
        assert_eq!(
            parse_message(br#"{"return": {"a": 1}, "id": 7}"#).unwrap(),
            Incoming::Reply {
                id: Some(7),
                reply: Ok(json!({"a": 1}))
            }
        );
        assert_eq!(
            parse_message(
                br#"{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command x has not been found"}}"#
            )
            .unwrap(),
            Incoming::Reply {
                id: Some(3),
                reply: Err((
                    "CommandNotFound".into(),
                    "The command x has not been found".into()
                ))
            }
        );
        let Incoming::Event(ev) = parse_message(
            br#"{"timestamp": {"seconds": 1700000000, "microseconds": 12}, "event": "MIGRATION", "data": {"status": "active"}}"#,
        )
        .unwrap() else {
            panic!("not an event")
        };
        assert_eq!(ev.event, "MIGRATION");
        assert_eq!(ev.data, json!({"status": "active"}));
        assert_eq!(ev.timestamp.seconds, 1_700_000_000);
        assert_eq!(ev.timestamp.microseconds, 12);
        // Events without data (STOP, RESUME) are fine.
        let Incoming::Event(ev) =
            parse_message(br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#)
                .unwrap()
        else {
            panic!("not an event")
        };
        assert_eq!(ev.data, Value::Null);

        assert!(parse_message(b"[1]").is_err());
        assert!(parse_message(b"{\"foo\": 1}").is_err());
        assert!(parse_message(b"nonsense").is_err());
        assert!(parse_message(br#"{"return": {}, "id": "abc"}"#).is_err());
    }

    #[test]
    fn parses_the_greeting() {
        let g = parse_greeting(
            br#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2"}, "capabilities": ["oob"]}}"#,
        )
        .unwrap();
        assert_eq!(g.version.qemu.major, 10);
        assert_eq!(g.version.qemu.micro, 2);
        assert_eq!(g.capabilities, vec!["oob".to_owned()]);
        assert!(parse_greeting(br#"{"return": {}}"#).is_err());
        assert!(is_event(
            br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#
        ));
        assert!(!is_event(br#"{"return": {}}"#));
    }
}

/// The client against a scripted fake QEMU over an in-memory pipe: dispatch logic only.
#[cfg(test)]
mod duplex_tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, DuplexStream};

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": ["oob"]}}"#;

    struct FakeQemu {
        lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<DuplexStream>>>,
        write: tokio::io::WriteHalf<DuplexStream>,
    }

    impl FakeQemu {
        async fn recv(&mut self) -> Value {
            let line = self
                .lines
                .next_line()
                .await
                .unwrap()
                .expect("client closed");
            serde_json::from_str(&line).unwrap()
        }
        async fn send(&mut self, v: Value) {
            let mut line = v.to_string();
            line.push_str("\r\n");
            self.write.write_all(line.as_bytes()).await.unwrap();
        }
    }

    /// A connected client and the fake QEMU's end, past the capability negotiation.
    async fn setup(timeout: Duration) -> (QmpClient, FakeQemu) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (r, w) = tokio::io::split(theirs);
        let mut fake = FakeQemu {
            lines: BufReader::new(r).lines(),
            write: w,
        };
        let server = tokio::spawn(async move {
            fake.write
                .write_all(format!("{GREETING}\r\n").as_bytes())
                .await
                .unwrap();
            let req = fake.recv().await;
            assert_eq!(req["execute"], "qmp_capabilities");
            assert!(req.get("arguments").is_none());
            fake.send(json!({"return": {}, "id": req["id"]})).await;
            fake
        });
        let options = QmpOptions {
            command_timeout: timeout,
            ..QmpOptions::default()
        };
        let client = QmpClient::from_stream(ours, "<fake>", options)
            .await
            .unwrap();
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn an_event_written_before_the_greeting_is_skipped_and_anything_else_refused() {
        for (early, accepted) in [
            (
                r#"{"timestamp": {"seconds": 1, "microseconds": 0}, "event": "RESUME"}"#,
                true,
            ),
            (r#"{"return": {}}"#, false),
        ] {
            let (ours, theirs) = tokio::io::duplex(1 << 16);
            let (r, w) = tokio::io::split(theirs);
            let mut fake = FakeQemu {
                lines: BufReader::new(r).lines(),
                write: w,
            };
            let early = early.to_owned();
            let server = tokio::spawn(async move {
                let script = format!("{early}\r\n{GREETING}\r\n");
                fake.write.write_all(script.as_bytes()).await.unwrap();
                if let Ok(Some(line)) = fake.lines.next_line().await {
                    let req: Value = serde_json::from_str(&line).unwrap();
                    fake.send(json!({"return": {}, "id": req["id"]})).await;
                }
                fake
            });
            let client = QmpClient::from_stream(ours, "<fake>", QmpOptions::default()).await;
            assert_eq!(
                client.is_ok(),
                accepted,
                "early line {accepted}: {client:?}"
            );
            drop(client);
            drop(server.await.unwrap());
        }
    }

    #[tokio::test]
    async fn out_of_order_replies_reach_their_callers() {
        let (client, mut fake) = setup(Duration::from_secs(5)).await;
        assert_eq!(client.version().qemu.major, 10);
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let c = client.clone();
                tokio::spawn(async move { c.execute_raw("echo", Some(json!({ "n": i }))).await })
            })
            .collect();
        let mut reqs = Vec::new();
        for _ in 0..3 {
            reqs.push(fake.recv().await);
        }
        // An event in between, and the answers in reverse order.
        let mut events = client.events();
        fake.send(json!({"event": "MIGRATION_PASS", "data": {"pass": 2},
                         "timestamp": {"seconds": 1, "microseconds": 0}}))
            .await;
        for req in reqs.iter().rev() {
            fake.send(json!({"return": {"n": req["arguments"]["n"]}, "id": req["id"]}))
                .await;
        }
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), json!({ "n": i }));
        }
        let ev = events.recv().await.unwrap();
        assert_eq!(ev.migration_pass(), Some(2));
    }

    #[tokio::test]
    async fn errors_timeouts_and_disconnect() {
        let (client, mut fake) = setup(Duration::from_millis(200)).await;

        let c = client.clone();
        let call = tokio::spawn(async move { c.execute_raw("nope", None).await });
        let req = fake.recv().await;
        fake.send(json!({"id": req["id"], "error": {"class": "CommandNotFound",
                                                    "desc": "The command nope has not been found"}}))
            .await;
        match call.await.unwrap() {
            Err(QmpError::Command {
                command,
                class,
                desc,
            }) => {
                assert_eq!(command, "nope");
                assert_eq!(class, "CommandNotFound");
                assert_eq!(desc, "The command nope has not been found");
            }
            other => panic!("{other:?}"),
        }

        // No answer: timeout; the late answer is ignored.
        let err = client.execute_raw("slow", None).await.unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
        let req = fake.recv().await;
        fake.send(json!({"return": {}, "id": req["id"]})).await;
        assert!(client.lock_pending_is_empty());

        // Garbage is logged and skipped; the connection still works.
        fake.write.write_all(b"this is not json\r\n").await.unwrap();
        let c = client.clone();
        let call = tokio::spawn(async move { c.execute_raw("ok", None).await });
        let req = fake.recv().await;
        fake.send(json!({"return": 42, "id": req["id"]})).await;
        assert_eq!(call.await.unwrap().unwrap(), json!(42));

        // QEMU goes away with a call pending.
        let long = client.with_command_timeout(Duration::from_secs(30));
        let pending = tokio::spawn(async move { long.execute_raw("hang", None).await });
        let mut events = client.events();
        let closed = {
            let c = client.clone();
            tokio::spawn(async move { c.closed().await })
        };
        let _ = fake.recv().await;
        drop(fake);
        let err = pending.await.unwrap().unwrap_err();
        assert!(err.is_disconnected(), "{err:?}");
        closed.await.unwrap();
        assert!(!client.is_connected());
        assert!(matches!(
            events.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
        let err = client.query_status().await.unwrap_err();
        assert!(err.is_disconnected(), "{err:?}");
        let err = client
            .wait_for_event("STOP", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.is_disconnected(), "{err:?}");
    }

    #[tokio::test]
    async fn dropping_the_last_handle_closes_the_socket() {
        let (client, mut fake) = setup(Duration::from_secs(5)).await;
        let clone = client.clone();
        drop(client);
        assert!(clone.is_connected());
        drop(clone);
        let eof = tokio::time::timeout(Duration::from_secs(5), fake.lines.next_line())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(eof, None);
    }

    #[tokio::test]
    async fn rejects_a_non_qmp_peer() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        theirs.write_all(b"SSH-2.0-OpenSSH\r\n").await.unwrap();
        let err = QmpClient::from_stream(ours, "<fake>", QmpOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Protocol { .. }), "{err:?}");
        assert!(err.to_string().contains("SSH-2.0"), "{err}");
    }

    impl QmpClient {
        fn lock_pending_is_empty(&self) -> bool {
            self.inner.shared.lock().pending.is_empty()
        }
    }
}
