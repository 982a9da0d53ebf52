//! A shard directory's files as the writer and recovery both see them: the clean-shutdown
//! marker's name, a sealed segment (summary and paths), the open segment with its O_DIRECT
//! append of whole aligned blocks, and the durable small-file write (temp file, fdatasync,
//! rename, directory fsync) used for indexes and the marker. Recovery builds these and the
//! writer takes them over, so neither has to import the other.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};

use super::format;
use super::index::{IndexBuilder, SegmentSummary};
use super::Error;
use crate::sys::os_error;

/// The clean-shutdown marker in a shard directory.
pub const CLEAN_MARKER: &str = "clean-shutdown";

/// A shard's segments as recovery leaves them, handed to the writer.
pub(crate) struct Recovered {
    pub sealed: VecDeque<SealedSegment>,
    pub open: OpenSegment,
    pub next_offset: u64,
}

/// A sealed segment the flusher knows about (for retention).
#[derive(Debug, Clone)]
pub(crate) struct SealedSegment {
    pub summary: SegmentSummary,
    pub path: PathBuf,
    pub index_path: PathBuf,
}

/// The segment being appended to, owned by the flusher.
pub(crate) struct OpenSegment {
    pub file: DmaFile,
    pub path: PathBuf,
    pub base_offset: u64,
    /// Logical length: the end of the last complete batch.
    pub len: u64,
    /// The bytes from the last aligned block boundary to `len`.
    pub tail: Vec<u8>,
    pub index: IndexBuilder,
    /// Receive time of the segment's first record (for `segment_max_age`).
    pub first_ts: Option<u64>,
}

impl OpenSegment {
    pub(crate) async fn create(dir: &Path, base_offset: u64, interval: u64) -> Result<Self, Error> {
        let path = dir.join(format::segment_file_name(base_offset));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(&path)
            .await
            .map_err(|e| Error::io(&path, os_error(e)))?;
        sync_dir(dir).await?;
        Ok(OpenSegment {
            file,
            path,
            base_offset,
            len: 0,
            tail: Vec::new(),
            index: IndexBuilder::new(base_offset, interval),
            first_ts: None,
        })
    }

    /// Writes `bytes` after the logical end with one aligned O_DIRECT write that also
    /// rewrites the partial block before it.
    pub(crate) async fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let align = self.file.alignment().max(512);
        let start = self.len - self.tail.len() as u64;
        let total = self.tail.len() + bytes.len();
        let padded = total.div_ceil(align as usize) * align as usize;
        let mut buf = self.file.alloc_dma_buffer(padded);
        {
            let dst = buf.as_bytes_mut();
            dst[..self.tail.len()].copy_from_slice(&self.tail);
            dst[self.tail.len()..total].copy_from_slice(bytes);
            dst[total..].fill(0);
        }
        let new_len = self.len + bytes.len() as u64;
        let new_tail_start = new_len - new_len % align;
        let keep_from = (new_tail_start - start) as usize;
        let new_tail = buf.as_bytes()[keep_from..total].to_vec();
        let written = self.file.write_at(buf, start).await.map_err(os_error)?;
        if written < padded {
            // A short O_DIRECT write means the device ran out of space.
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.len = new_len;
        self.tail = new_tail;
        Ok(())
    }
}

pub(crate) async fn sync_dir(dir: &Path) -> Result<(), Error> {
    // glommio opens a relative directory path so that its fsync fails with EBADF: resolve it
    // first (a relative `--data-dir` made every checkpoint fail on its directory sync).
    let dir = &std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
    let d = glommio::io::Directory::open(dir)
        .await
        .map_err(|e| Error::io(dir, os_error(e)))?;
    d.sync().await.map_err(|e| Error::io(dir, os_error(e)))?;
    d.close().await.map_err(|e| Error::io(dir, os_error(e)))
}

/// Writes a file (an index, a checkpoint) durably: DMA writes to `<path>.tmp`, fdatasync,
/// rename, directory fsync. Readers never see a half-written file.
pub(crate) async fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp)
        .await
        .map_err(|e| Error::io(&tmp, os_error(e)))?;
    let align = file.alignment().max(512) as usize;
    let io_err = |e: glommio::GlommioError<()>| Error::io(&tmp, os_error(e));
    // In pieces of at most 8 MiB: a checkpoint base can be hundreds of MB, and one DMA buffer
    // of its size would double the memory it already takes.
    // (A multiple of every DMA alignment, so each piece starts aligned.)
    const PIECE: usize = 8 << 20;
    for (i, chunk) in bytes.chunks(PIECE).enumerate() {
        let padded = chunk.len().div_ceil(align) * align;
        let mut buf = file.alloc_dma_buffer(padded);
        buf.as_bytes_mut()[..chunk.len()].copy_from_slice(chunk);
        buf.as_bytes_mut()[chunk.len()..].fill(0);
        let n = file
            .write_at(buf, (i * PIECE) as u64)
            .await
            .map_err(io_err)?;
        if n < padded {
            return Err(Error::io(&tmp, io::Error::from_raw_os_error(libc::ENOSPC)));
        }
    }
    file.truncate(bytes.len() as u64).await.map_err(io_err)?;
    file.fdatasync().await.map_err(io_err)?;
    file.close().await.map_err(io_err)?;
    glommio::io::rename(&tmp, path)
        .await
        .map_err(|e| Error::io(path, os_error(e)))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relative directory (a `--data-dir data` start) is synced like an absolute one, and a
    /// file of several pieces is written whole.
    #[test]
    fn durable_write_under_a_relative_directory() {
        let dir = tempfile::tempdir_in("target").expect("tempdir under target/");
        let rel = dir
            .path()
            .strip_prefix(std::env::current_dir().expect("cwd"))
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| dir.path().to_path_buf());
        assert!(rel.is_relative(), "{}", rel.display());
        let path = rel.join("x.bin");
        let ex = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { write_file_durably(&path, b"hello").await })
            .expect("executor");
        ex.join().expect("join").expect("durable write");
        assert_eq!(
            std::fs::read(dir.path().join("x.bin")).expect("read"),
            b"hello"
        );
    }
}
