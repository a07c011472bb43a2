//! Several processes as one study, through MLX's own distributed layer (mlx-c's
//! `mlx_distributed_*`: the `ring` backend over TCP, `jaccl` over Thunderbolt, MPI, NCCL).
//!
//! A process is one rank of a group when it was started by a launcher (`mlxi launch`, or
//! `mlx.launch` itself): the launcher sets `MLX_RANK` and the backend's own variables
//! (`MLX_HOSTFILE` for `ring`, `MLX_JACCL_COORDINATOR`/`MLX_IBV_DEVICES` for `jaccl`,
//! `MLX_WORLD_SIZE` for NCCL). Without `MLX_RANK` the world is one process of rank 0 and every
//! collective returns its input, so a script behaves exactly as it does alone.
//!
//! MLX's ring backend blocks in `recv` while a peer is missing or stopped. Every blocking step
//! here (joining the group, each collective) runs under a deadline: a watchdog thread ends the
//! process with a message and exit status 124 when it passes (`MLXI_DIST_INIT_TIMEOUT`, default
//! 120 s; `MLXI_DIST_TIMEOUT`, default 600 s). `mlxi launch` also watches its children and
//! stops the others as soon as one fails.
//!
//! Before each collective the ranks exchange a small header (dtype and shape), so a script that
//! hands ranks mismatched tensors gets the same clear error on every rank instead of a hang or
//! garbled bytes.

use std::cell::OnceCell;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use mlx_rs::{Array, Dtype, Stream};

use crate::arrays::fmt_shape;
use crate::{Error, Result};

/// The most dimensions a tensor may have in a collective (the header has room for this many).
const MAX_DIMS: usize = 8;
const HEADER: usize = 2 + MAX_DIMS;

/// Exit status of a rank that gave up waiting for its peers (as `timeout(1)`).
pub const TIMEOUT_EXIT: i32 = 124;

/// This process's place in the group.
pub struct World {
    rank: usize,
    size: usize,
    backend: String,
    group: Option<Group>,
}

/// An initialised mlx-c group handle.
struct Group(mlx_sys::mlx_distributed_group);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the handle came from mlx_distributed_init and is owned here alone.
        unsafe { mlx_sys::mlx_distributed_group_free(self.0) };
    }
}

thread_local! {
    // MLX is not thread safe: the world lives on the one thread that runs MLX.
    static WORLD: OnceCell<Rc<World>> = const { OnceCell::new() };
    // Depth of `locally` scopes: inside one, work is not split and collectives are refused.
    static LOCAL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// While it lives, this process works alone: data-parallel verbs (capture, ...) run every
/// input here, and explicit collectives are an error (the other ranks may be elsewhere).
pub struct LocalScope(());

impl LocalScope {
    pub fn enter() -> LocalScope {
        LOCAL.with(|d| d.set(d.get() + 1));
        LocalScope(())
    }
}

impl Drop for LocalScope {
    fn drop(&mut self) {
        LOCAL.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

fn in_local_scope() -> bool {
    LOCAL.with(|d| d.get() > 0)
}

/// The group a data-parallel verb splits its work over: `None` alone, in a group of one, or
/// inside a [`LocalScope`].
pub fn data_parallel() -> Result<Option<Rc<World>>> {
    if !launched() || in_local_scope() {
        return Ok(None);
    }
    let w = world()?;
    Ok((w.size > 1).then_some(w))
}

/// True when a launcher started this process as one rank of a group (`MLX_RANK` is set).
pub fn launched() -> bool {
    std::env::var_os("MLX_RANK").is_some()
}

/// The world this process belongs to, joined on first use (a single process of rank 0 unless
/// [`launched`]). Joining waits for every peer, under `MLXI_DIST_INIT_TIMEOUT`.
pub fn world() -> Result<Rc<World>> {
    if let Some(w) = WORLD.with(|c| c.get().cloned()) {
        return Ok(w);
    }
    let w = Rc::new(join()?);
    WORLD.with(|c| {
        let _ = c.set(w.clone());
    });
    Ok(w)
}

/// The backend the launcher's variables ask for (`MLXI_BACKEND` overrides).
fn backend_from_env() -> String {
    if let Ok(b) = std::env::var("MLXI_BACKEND") {
        return b;
    }
    let has = |v: &str| std::env::var_os(v).is_some();
    if has("MLX_HOSTFILE") {
        "ring".into()
    } else if has("MLX_JACCL_COORDINATOR") || has("MLX_IBV_DEVICES") {
        "jaccl".into()
    } else if has("MLX_WORLD_SIZE") {
        "nccl".into()
    } else {
        "any".into()
    }
}

fn join() -> Result<World> {
    let alone = World {
        rank: 0,
        size: 1,
        backend: "none".into(),
        group: None,
    };
    if !launched() {
        return Ok(alone);
    }
    let backend = backend_from_env();
    if !["any", "ring", "jaccl", "mpi", "nccl"].contains(&backend.as_str()) {
        return Err(Error::Invalid(format!(
            "MLXI_BACKEND={backend}: not a backend (any, ring, jaccl, mpi, nccl)"
        )));
    }
    // `mlx.launch -n 1` hands the ring backend an empty host file: one process.
    if backend == "ring" {
        if let Some(path) = std::env::var_os("MLX_HOSTFILE") {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            if text.trim().is_empty() {
                return Ok(alone);
            }
        }
    }
    let bk = CString::new(backend.clone()).map_err(|_| Error::Invalid("MLXI_BACKEND".into()))?;
    // SAFETY: `bk` is a valid NUL-terminated string for the duration of the call.
    if !unsafe { mlx_sys::mlx_distributed_is_available(bk.as_ptr()) } {
        return Err(Error::Invalid(format!(
            "the MLX this mlxi is built on has no '{backend}' distributed backend"
        )));
    }
    let timeout = timeout_from_env("MLXI_DIST_INIT_TIMEOUT", 120)?;
    let rank_hint = std::env::var("MLX_RANK").unwrap_or_default();
    let group = with_deadline(
        &format!("rank {rank_hint}: joining the group"),
        timeout,
        || {
            // SAFETY: `res` starts empty and receives the new group on success; `bk` outlives the
            // call.
            unsafe {
                let mut res = mlx_sys::mlx_distributed_group_new();
                let status = mlx_sys::mlx_distributed_init(&mut res, true, bk.as_ptr());
                if status != 0 {
                    mlx_sys::mlx_distributed_group_free(res);
                    return Err(Error::Invalid(format!(
                        "rank {rank_hint}: cannot join the '{backend}' group (a peer missing, a \
                     wrong host file or a port in use; MLX_RING_VERBOSE=1 tells more)"
                    )));
                }
                Ok(Group(res))
            }
        },
    )?;
    // SAFETY: the group handle is valid.
    let (rank, size) = unsafe {
        (
            mlx_sys::mlx_distributed_group_rank(group.0),
            mlx_sys::mlx_distributed_group_size(group.0),
        )
    };
    if rank < 0 || size < 1 || rank >= size {
        return Err(Error::Invalid(format!(
            "MLX reported rank {rank} of {size}"
        )));
    }
    let backend = if backend == "any" {
        "mlx".into()
    } else {
        backend
    };
    Ok(World {
        rank: rank as usize,
        size: size as usize,
        backend,
        group: Some(group),
    })
}

/// Where rank > 0 writes: files a script writes go to a private scratch folder there, so that
/// only rank 0 writes results and plots while every rank runs the same script.
static SCRATCH: Mutex<Option<tempfile::TempDir>> = Mutex::new(None);

/// The path a file write to `real` goes to: `real` itself alone or on rank 0; on another rank
/// the same path under this rank's scratch folder (created on first use, removed by
/// [`finish`]). Parent folders of the scratch path are created.
pub fn write_target(real: &Path) -> Result<PathBuf> {
    if !launched() {
        return Ok(real.to_path_buf());
    }
    let w = world()?;
    if w.rank == 0 {
        return Ok(real.to_path_buf());
    }
    let mut guard = SCRATCH
        .lock()
        .map_err(|_| Error::Invalid("the rank's scratch folder is unusable".into()))?;
    if guard.is_none() {
        let dir = tempfile::Builder::new()
            .prefix(&format!("mlxi-rank{}-", w.rank))
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        *guard = Some(dir);
    }
    let root = guard
        .as_ref()
        .map(|d| d.path().to_path_buf())
        .unwrap_or_default();
    let rel: PathBuf = real
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    let target = root.join(rel);
    // Mirror the real folder's existence: a write into a folder that does not exist fails on
    // rank 0, so it fails here too.
    if let (Some(parent), Some(real_parent)) = (target.parent(), real.parent()) {
        if real_parent.is_dir() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
    }
    Ok(target)
}

/// Removes this rank's scratch folder (the process ends without destructors).
pub fn finish() {
    if let Ok(mut g) = SCRATCH.lock() {
        g.take();
    }
}

/// Seconds from an environment variable (0 means no limit), else the default.
fn timeout_from_env(var: &str, default: u64) -> Result<Option<Duration>> {
    let secs = match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{var}={v}: expected a number of seconds (0: no limit)"
                ))
            })?,
        Err(_) => default as f64,
    };
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs.min(1e9))))
}

/// What the watchdog waits for: a step that must finish before `at`.
struct Deadline {
    at: Instant,
    what: String,
    limit: Duration,
}

static DEADLINE: Mutex<Option<Deadline>> = Mutex::new(None);
static WATCHDOG: Once = Once::new();

/// Runs `f` (a step that may block on peers) under a deadline: past it, the watchdog thread
/// prints what was waiting and ends the process with [`TIMEOUT_EXIT`]. MLX's blocking calls
/// cannot be interrupted, so ending the process is the only bounded way out.
fn with_deadline<T>(what: &str, limit: Option<Duration>, f: impl FnOnce() -> T) -> T {
    let Some(limit) = limit else { return f() };
    WATCHDOG.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("mlxi-watchdog".into())
            .spawn(watch);
    });
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            if let Ok(mut d) = DEADLINE.lock() {
                *d = None;
            }
        }
    }
    if let Ok(mut d) = DEADLINE.lock() {
        *d = Some(Deadline {
            at: Instant::now() + limit,
            what: what.to_string(),
            limit,
        });
    }
    let _clear = Clear;
    f()
}

fn watch() {
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let expired = match DEADLINE.lock() {
            Ok(d) => d
                .as_ref()
                .filter(|d| Instant::now() >= d.at)
                .map(|d| (d.what.clone(), d.limit)),
            Err(_) => None,
        };
        if let Some((what, limit)) = expired {
            use std::io::Write;
            eprintln!(
                "mlxi: {what}: no answer from the other ranks after {:.0} s (a peer is \
                 missing, stopped or much slower; MLXI_DIST_TIMEOUT / MLXI_DIST_INIT_TIMEOUT \
                 set the limits)",
                limit.as_secs_f64()
            );
            let _ = std::io::stderr().flush();
            let _ = std::io::stdout().flush();
            // SAFETY: ends the process at once; the MLX thread is blocked and cannot be joined.
            unsafe { libc::_exit(TIMEOUT_EXIT) }
        }
    }
}

/// Runs one mlx-c collective that writes an array into `res`.
fn call(what: &str, f: impl FnOnce(*mut mlx_sys::mlx_array) -> i32) -> Result<Array> {
    // SAFETY: `res` starts empty; on success mlx-c stores a new array in it whose ownership
    // passes to the returned `Array`; on failure it is freed here.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        if f(&mut res) != 0 {
            mlx_sys::mlx_array_free(res);
            return Err(Error::Invalid(format!("MLX {what} failed")));
        }
        Ok(Array::from_ptr(res))
    }
}

fn dtype_code(d: Dtype) -> i32 {
    d as u32 as i32
}

impl World {
    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// `"none"` for a single process, else the backend joined (`"ring"`, `"jaccl"`, ...).
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// This rank's share of `n` items: a contiguous range, the first `n % size` ranks one
    /// longer. Concatenating every rank's share in rank order gives `0..n`.
    pub fn share(&self, n: usize) -> std::ops::Range<usize> {
        self.share_of(self.rank, n)
    }

    /// Rank `rank`'s share of `n` items (see [`World::share`]).
    pub fn share_of(&self, rank: usize, n: usize) -> std::ops::Range<usize> {
        let base = n / self.size;
        let extra = n % self.size;
        let start = rank * base + rank.min(extra);
        start..start + base + usize::from(rank < extra)
    }

    fn limit(&self) -> Result<Option<Duration>> {
        timeout_from_env("MLXI_DIST_TIMEOUT", 600)
    }

    /// Runs a collective on the group and evaluates it, under the collective deadline.
    fn collective(
        &self,
        what: &str,
        x: &Array,
        op: unsafe extern "C" fn(
            *mut mlx_sys::mlx_array,
            mlx_sys::mlx_array,
            mlx_sys::mlx_distributed_group,
            mlx_sys::mlx_stream,
        ) -> i32,
    ) -> Result<Array> {
        let Some(group) = &self.group else {
            return Ok(x.clone());
        };
        if in_local_scope() {
            return Err(Error::Invalid(format!(
                "{what}: a collective inside locally(...), where the ranks work apart"
            )));
        }
        // The ring and jaccl backends communicate from the CPU stream.
        let stream = Stream::cpu();
        let out = call(what, |res| unsafe {
            // SAFETY: `x`, the group and the stream are valid handles for the call.
            op(res, x.as_ptr(), group.0, stream.as_ptr())
        })?;
        let label = format!("rank {}: {what}", self.rank);
        with_deadline(&label, self.limit()?, || out.eval())?;
        Ok(out)
    }

    /// Every rank's header (dtype and shape of `x`), in rank order.
    fn headers(&self, what: &str, x: &Array) -> Result<Vec<(i32, Vec<i32>)>> {
        if x.ndim() > MAX_DIMS {
            return Err(Error::Invalid(format!(
                "{what}: at most {MAX_DIMS} dimensions, got {}",
                fmt_shape(x.shape())
            )));
        }
        let mut h = vec![0i32; HEADER];
        h[0] = x.ndim() as i32;
        h[1] = dtype_code(x.dtype());
        h[2..2 + x.ndim()].copy_from_slice(x.shape());
        let all = self.collective(
            what,
            &Array::from_slice(&h, &[1, HEADER as i32]),
            mlx_sys::mlx_distributed_all_gather,
        )?;
        let flat = all.as_slice::<i32>();
        if flat.len() != HEADER * self.size {
            return Err(Error::Invalid(format!(
                "{what}: the ranks' headers did not arrive"
            )));
        }
        Ok(flat
            .chunks(HEADER)
            .map(|c| {
                let nd = (c[0].max(0) as usize).min(MAX_DIMS);
                (c[1], c[2..2 + nd].to_vec())
            })
            .collect())
    }

    /// The sum of `x` over every rank (same shape and dtype on each).
    pub fn all_sum(&self, x: &Array) -> Result<Array> {
        if self.group.is_none() {
            return Ok(x.clone());
        }
        let heads = self.headers("all_sum", x)?;
        let mine = (dtype_code(x.dtype()), x.shape().to_vec());
        if let Some(r) = heads.iter().position(|h| *h != mine) {
            return Err(Error::Invalid(format!(
                "all_sum: every rank needs the same shape and dtype; rank {} has {} {}, rank \
                 {r} has {} {}",
                self.rank,
                fmt_shape(&mine.1),
                crate::arrays::dtype_name(x.dtype()),
                fmt_shape(&heads[r].1),
                dtype_name_of(heads[r].0),
            )));
        }
        self.collective("all_sum", x, mlx_sys::mlx_distributed_all_sum)
    }

    /// Every rank's `x` stacked along the first axis, in rank order. The first dimension may
    /// differ between ranks (an uneven split); the others and the dtype must match. A scalar
    /// counts as one row.
    pub fn all_gather(&self, x: &Array) -> Result<Array> {
        let x = if x.ndim() == 0 {
            x.reshape(&[1])?
        } else {
            x.clone()
        };
        if self.group.is_none() {
            return Ok(x);
        }
        let heads = self.headers("all_gather", &x)?;
        let code = dtype_code(x.dtype());
        for (r, (c, shape)) in heads.iter().enumerate() {
            if *c != code || shape.len() != x.ndim() || shape[1..] != x.shape()[1..] {
                return Err(Error::Invalid(format!(
                    "all_gather: every rank needs the same dtype and the same shape after the \
                     first axis; rank {} has {} {}, rank {r} has {} {}",
                    self.rank,
                    fmt_shape(x.shape()),
                    crate::arrays::dtype_name(x.dtype()),
                    fmt_shape(shape),
                    dtype_name_of(*c),
                )));
            }
        }
        let rows: Vec<i32> = heads.iter().map(|(_, s)| s[0]).collect();
        let most = rows.iter().copied().max().unwrap_or(0);
        if rows.iter().all(|&r| r == most) && most > 0 {
            return self.collective("all_gather", &x, mlx_sys::mlx_distributed_all_gather);
        }
        // Uneven rows: pad every rank to the longest (at least one row, so no rank sends
        // nothing), gather, then keep each rank's own rows.
        let padded_rows = most.max(1);
        let mut pad_shape = x.shape().to_vec();
        pad_shape[0] = padded_rows - x.shape()[0];
        let padded = if pad_shape[0] > 0 {
            let zeros = mlx_rs::ops::zeros_dtype(&pad_shape, x.dtype())?;
            mlx_rs::ops::concatenate(&[&x, &zeros], 0)?
        } else {
            x.clone()
        };
        let all = self.collective("all_gather", &padded, mlx_sys::mlx_distributed_all_gather)?;
        let parts: Vec<Array> = rows
            .iter()
            .enumerate()
            .map(|(r, &n)| {
                let start = r as i32 * padded_rows;
                let idx = Array::from_iter(start..start + n, &[n]);
                all.take_axis(&idx, 0)
            })
            .collect::<std::result::Result<_, _>>()?;
        let refs: Vec<&Array> = parts.iter().collect();
        Ok(mlx_rs::ops::concatenate(&refs, 0)?)
    }

    /// Every rank's bytes, in rank order (for sharing non-tensor results).
    pub fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        if self.group.is_none() {
            return Ok(vec![bytes.to_vec()]);
        }
        let len = i32::try_from(bytes.len())
            .map_err(|_| Error::Invalid("gather: a value of more than 2 GB".into()))?;
        let x = Array::from_slice(bytes, &[len]);
        let all = self.all_gather(&x)?;
        let lens = self.all_gather(&Array::from_slice(&[len], &[1]))?;
        let lens = lens.as_slice::<i32>().to_vec();
        let flat = all.as_slice::<u8>();
        let mut out = Vec::with_capacity(self.size);
        let mut at = 0usize;
        for n in lens {
            let n = n.max(0) as usize;
            let end = (at + n).min(flat.len());
            out.push(flat[at..end].to_vec());
            at = end;
        }
        Ok(out)
    }
}

/// Pipeline stages: point-to-point transfers and broadcasts that a pipeline-sharded model's
/// forward makes on every rank at once. Unlike the script-level collectives they also run inside
/// `locally(...)` (every rank runs the same forward there), and they skip the header exchange
/// where the shape is known on every rank.
impl World {
    fn group(&self, what: &str) -> Result<&Group> {
        self.group.as_ref().ok_or_else(|| {
            Error::Invalid(format!("{what}: this process is not one rank of a group"))
        })
    }

    /// Evaluates `out` under the collective deadline.
    fn wait(&self, what: &str, out: &Array) -> Result<()> {
        let label = format!("rank {}: {what}", self.rank);
        with_deadline(&label, self.limit()?, || out.eval())?;
        Ok(())
    }

    fn peer(&self, what: &str, r: usize) -> Result<i32> {
        if r >= self.size || r == self.rank {
            return Err(Error::Invalid(format!(
                "{what}: rank {r} is not another rank of this group of {}",
                self.size
            )));
        }
        Ok(r as i32)
    }

    /// Sends `x` to rank `dst` and waits until it is handed over.
    pub fn send(&self, x: &Array, dst: usize) -> Result<()> {
        let what = format!("send to rank {dst}");
        let dst = self.peer(&what, dst)?;
        let group = self.group(&what)?;
        let stream = Stream::cpu();
        let out = call(&what, |res| unsafe {
            // SAFETY: `x`, the group and the stream are valid handles for the call.
            mlx_sys::mlx_distributed_send(res, x.as_ptr(), dst, group.0, stream.as_ptr())
        })?;
        self.wait(&what, &out)
    }

    /// Receives an array of `shape` and `dtype` from rank `src`.
    pub fn recv(&self, shape: &[i32], dtype: Dtype, src: usize) -> Result<Array> {
        let what = format!("receive from rank {src}");
        let src = self.peer(&what, src)?;
        let group = self.group(&what)?;
        let stream = Stream::cpu();
        let out = call(&what, |res| unsafe {
            // SAFETY: `shape` outlives the call; the group and the stream are valid handles.
            mlx_sys::mlx_distributed_recv(
                res,
                shape.as_ptr(),
                shape.len(),
                dtype as u32 as mlx_sys::mlx_dtype,
                src,
                group.0,
                stream.as_ptr(),
            )
        })?;
        self.wait(&what, &out)?;
        Ok(out)
    }

    /// Rank `root`'s `x` on every rank, bit for bit. Every rank passes an array of the same
    /// shape and dtype; only the root's values count.
    pub fn broadcast_same(&self, x: &Array, root: usize) -> Result<Array> {
        let what = format!("broadcast from rank {root}");
        let group = self.group(&what)?;
        let mut one = vec![1];
        one.extend_from_slice(x.shape());
        let x1 = x.reshape(&one)?;
        let stream = Stream::cpu();
        let all = call(&what, |res| unsafe {
            // SAFETY: `x1`, the group and the stream are valid handles for the call.
            mlx_sys::mlx_distributed_all_gather(res, x1.as_ptr(), group.0, stream.as_ptr())
        })?;
        self.wait(&what, &all)?;
        use mlx_rs::ops::indexing::TryIndexOp;
        let mine = all.try_index(root as i32)?;
        Ok(mine)
    }

    /// Rank `root`'s `x` (or nothing) on every rank, whose shape only the root knows: a header
    /// first, then the values.
    pub fn broadcast(&self, x: Option<&Array>, root: usize) -> Result<Option<Array>> {
        let what = format!("broadcast from rank {root}");
        let group = self.group(&what)?;
        let mut h = vec![-1i32; HEADER];
        if let Some(x) = x {
            if x.ndim() > MAX_DIMS {
                return Err(Error::Invalid(format!(
                    "{what}: at most {MAX_DIMS} dimensions, got {}",
                    fmt_shape(x.shape())
                )));
            }
            h[0] = x.ndim() as i32;
            h[1] = dtype_code(x.dtype());
            h[2..2 + x.ndim()].copy_from_slice(x.shape());
        }
        let head = Array::from_slice(&h, &[1, HEADER as i32]);
        let stream = Stream::cpu();
        let all = call(&what, |res| unsafe {
            // SAFETY: `head`, the group and the stream are valid handles for the call.
            mlx_sys::mlx_distributed_all_gather(res, head.as_ptr(), group.0, stream.as_ptr())
        })?;
        self.wait(&what, &all)?;
        let flat = all.as_slice::<i32>();
        let Some(c) = flat.chunks(HEADER).nth(root) else {
            return Err(Error::Invalid(format!(
                "{what}: the headers did not arrive"
            )));
        };
        if c[0] < 0 {
            return Ok(None);
        }
        let nd = (c[0] as usize).min(MAX_DIMS);
        let shape = c[2..2 + nd].to_vec();
        let dtype = Dtype::try_from(c[1] as u32)
            .map_err(|_| Error::Invalid(format!("{what}: an unknown dtype")))?;
        let zeros;
        let x = match x {
            Some(x) if self.rank == root => x,
            _ => {
                zeros = mlx_rs::ops::zeros_dtype(&shape, dtype)?;
                &zeros
            }
        };
        self.broadcast_same(x, root).map(Some)
    }
}

fn dtype_name_of(code: i32) -> &'static str {
    Dtype::try_from(code as u32)
        .map(crate::arrays::dtype_name)
        .unwrap_or("an unknown dtype")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(rank: usize, size: usize) -> World {
        World {
            rank,
            size,
            backend: "test".into(),
            group: None,
        }
    }

    #[test]
    fn shares_cover_every_item_once_in_order() {
        for size in 1..5 {
            for n in 0..11 {
                let all: Vec<usize> = (0..size).flat_map(|r| world(r, size).share(n)).collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} size {size}");
            }
        }
    }
}
