//! After the last tar entry: lay out and write the metadata. File data is already in the data
//! area (blocks 1..); this appends directory and long-symlink blocks, then the inode area
//! (`meta_blkaddr`), then writes the superblock at byte 1024.
//!
//! Inode area: slots of 32 bytes from `meta_blkaddr`; the root goes first at nid 1 (nid 0 would
//! read as "no inode" to some `readdir` users; `root_nid` has only 16 bits). Inodes are visited
//! breadth-first, children in name order, so the layout is a function of the tree alone. An
//! inode whose header, xattrs and inline tail fit in a block never crosses a block boundary (the
//! kernel requires it of inline data; keeping it for all is cheap). A directory's or symlink's
//! last partial block is inlined when it fits, else the inode is flat plain.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Seek, SeekFrom, Write};

use super::data::{DataArea, FileLayout};
use super::format::{
    self, DataLayout, InodeHeader, Super, BLOCK_SIZE, DIRENT_SIZE, FEATURE_INCOMPAT_CHUNKED_FILE,
    SLOT_SIZE, SUPER_OFFSET,
};
use super::tree::{Body, Ino, Tree, ROOT};
use super::{Content, Error, Listing, Node, Report};

/// One inode's encoded parts, before nids are known.
struct Plan {
    header: InodeHeader,
    xattrs: Vec<u8>,
    /// Inline tail or chunk map.
    extra: Vec<u8>,
    /// Length of the inline tail `extra` will hold once directory blocks are encoded.
    inline_tail: u64,
    /// Zero bytes kept after the xattrs of an implied directory, so a chain image can give it
    /// the lower layers' xattrs in place (`super::view::XATTR_ROOM`).
    reserve: u64,
}

impl Plan {
    fn len(&self) -> u64 {
        (self.header.len() + self.xattrs.len() + self.extra.len()) as u64
            + self.inline_tail
            + self.reserve
    }
}

/// Directory entries split into blocks: per block, `(name, child)` in name order.
fn dir_blocks(tree: &Tree, dir: Ino, parent: Ino) -> Vec<Vec<(Vec<u8>, Ino)>> {
    let Body::Dir(children) = &tree.inodes[dir].body else {
        return Vec::new();
    };
    let mut all: Vec<(Vec<u8>, Ino)> = vec![(b".".to_vec(), dir), (b"..".to_vec(), parent)];
    all.extend(children.iter().map(|(n, &i)| (n.to_vec(), i)));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut blocks = vec![Vec::new()];
    let mut used = 0usize;
    for e in all {
        let need = DIRENT_SIZE + e.0.len();
        if used + need > BLOCK_SIZE as usize {
            blocks.push(Vec::new());
            used = 0;
        }
        used += need;
        blocks.last_mut().expect("one block at least").push(e);
    }
    blocks
}

fn block_used(block: &[(Vec<u8>, Ino)]) -> usize {
    block.iter().map(|e| DIRENT_SIZE + e.0.len()).sum()
}

fn encode_dir_block(tree: &Tree, block: &[(Vec<u8>, Ino)], nids: &[u64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(BLOCK_SIZE as usize);
    let mut nameoff = block.len() * DIRENT_SIZE;
    for (name, ino) in block {
        let ft = format::file_type(tree.inodes[*ino].attrs.mode);
        format::put_dirent(&mut b, nids[*ino], nameoff as u16, ft);
        nameoff += name.len();
    }
    for (name, _) in block {
        b.extend_from_slice(name);
    }
    b
}

/// The tree as reached from the root: inodes in first-visit order, each directory's parent,
/// link counts, and (for the manifest) every path.
struct Walk {
    order: Vec<Ino>,
    parent: Vec<Ino>,
    nlink: Vec<u32>,
    paths: Vec<(Vec<u8>, Ino)>,
}

/// Breadth-first from the root, children in name order. Inodes an entry replaced are not
/// reached and not written (their data blocks stay behind as unused space).
fn walk(tree: &Tree, manifest: bool) -> Walk {
    let n = tree.inodes.len();
    let mut w = Walk {
        order: vec![ROOT],
        parent: vec![ROOT; n],
        nlink: vec![0; n],
        paths: vec![(Vec::new(), ROOT)],
    };
    let mut seen = vec![false; n];
    seen[ROOT] = true;
    let mut queue = VecDeque::from([(ROOT, Vec::new())]);
    while let Some((dir, dir_path)) = queue.pop_front() {
        w.nlink[dir] += 2;
        let Body::Dir(children) = &tree.inodes[dir].body else {
            continue;
        };
        for (name, &child) in children {
            let is_dir = matches!(tree.inodes[child].body, Body::Dir(_));
            if is_dir {
                w.nlink[dir] += 1;
            } else {
                w.nlink[child] += 1;
            }
            let first = !seen[child];
            seen[child] = true;
            if !(manifest || first && is_dir) {
                if first {
                    w.order.push(child);
                }
                continue;
            }
            let mut path: Vec<u8> = dir_path.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            if manifest {
                w.paths.push((path.clone(), child));
            }
            if first {
                w.order.push(child);
                if is_dir {
                    w.parent[child] = dir;
                    queue.push_back((child, path));
                }
            }
        }
    }
    w
}

/// The most common mtime: it becomes `build_time`, so most inodes can be compact.
fn build_time(tree: &Tree, order: &[Ino]) -> (i64, u32) {
    let mut counts: HashMap<(i64, u32), u64> = HashMap::new();
    for &i in order {
        let a = &tree.inodes[i].attrs;
        *counts.entry((a.mtime, a.mtime_nsec)).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map_or((0, 0), |(t, _)| t)
}

/// Encode one inode but its nid-dependent parts (directory entries, block addresses of
/// directory and symlink blocks).
fn plan(tree: &Tree, i: Ino, w: &Walk, build: (i64, u32)) -> Result<Plan, Error> {
    let inode = &tree.inodes[i];
    let a = &inode.attrs;
    let xs: Vec<(u8, &[u8], &[u8])> = a
        .xattrs
        .iter()
        .filter_map(|(k, v)| format::split_xattr_name(k).map(|(idx, s)| (idx, s, v.as_slice())))
        .collect();
    // Entries are checked on the way in; only the opaque marker can still tip it over.
    let (xattrs, icount) = format::encode_xattrs(&xs).ok_or(Error::TooLarge)?;
    let mut header = InodeHeader {
        layout: DataLayout::FlatPlain,
        xattr_icount: icount,
        mode: a.mode,
        nlink: w.nlink[i],
        size: 0,
        i_u: 0,
        ino: 0,
        uid: a.uid,
        gid: a.gid,
        mtime: a.mtime.cast_unsigned(),
        mtime_nsec: a.mtime_nsec,
        extended: false,
    };
    let mut extra = Vec::new();
    let mut blocks_of_bytes = false;
    match &inode.body {
        Body::Dir(_) => {
            let blocks = dir_blocks(tree, i, w.parent[i]);
            let last = block_used(blocks.last().map_or(&[][..], Vec::as_slice));
            header.size = (blocks.len() as u64 - 1) * BLOCK_SIZE + last as u64;
            blocks_of_bytes = true;
        }
        Body::Symlink(target) => {
            header.size = target.len() as u64;
            blocks_of_bytes = true;
        }
        Body::File { size, layout, .. } => {
            header.size = *size;
            match layout {
                FileLayout::Plain { blkaddr } => header.i_u = *blkaddr,
                FileLayout::Chunked { chunk_bits, map } => {
                    header.layout = DataLayout::ChunkBased;
                    header.i_u = u32::from(*chunk_bits);
                    extra = map.iter().flat_map(|a| a.to_le_bytes()).collect();
                }
            }
        }
        Body::Device(major, minor) => {
            header.i_u = format::encode_dev(*major, *minor).unwrap_or(0);
        }
        Body::Fifo => {}
    }
    // Implied directories are extended, flat (no inline tail after the xattrs) and followed by
    // room for xattrs, so `super::view::patch_dirs` can give them other attributes and xattrs
    // in place (about 300 bytes and one directory block more per implied directory).
    let implied = tree.implied.contains(&i);
    header.extended = implied || !header.fits_compact(build.0.cast_unsigned(), build.1);
    let reserve = if implied {
        super::view::XATTR_ROOM.saturating_sub(xattrs.len()) as u64
    } else {
        0
    };
    let mut inline_tail = 0;
    let tail = header.size % BLOCK_SIZE;
    if !implied
        && blocks_of_bytes
        && tail > 0
        && (header.len() + xattrs.len()) as u64 + tail <= BLOCK_SIZE
    {
        // The last partial block goes right after the inode, in the same block.
        header.layout = DataLayout::FlatInline;
        inline_tail = tail;
    }
    Ok(Plan {
        header,
        xattrs,
        extra,
        inline_tail,
        reserve,
    })
}

/// Give every inode its slot: 32-byte aligned, root first at nid 1, and never across a block
/// boundary when it fits in one. Returns the nids and the inode area's length.
fn assign_nids(order: &[Ino], plans: &[Option<Plan>], n: usize) -> (Vec<u64>, u64) {
    let mut nids = vec![u64::MAX; n];
    let mut off = SLOT_SIZE;
    for &i in order {
        let len = plans[i].as_ref().expect("planned").len();
        off = off.next_multiple_of(SLOT_SIZE);
        if len <= BLOCK_SIZE && off % BLOCK_SIZE + len > BLOCK_SIZE {
            off = off.next_multiple_of(BLOCK_SIZE);
        }
        nids[i] = off / SLOT_SIZE;
        off += len;
    }
    (nids, off)
}

/// Lay out and write everything after the data area; returns the finished report.
pub(crate) fn finish<W: Write + Seek>(
    tree: &Tree,
    mut area: DataArea<W>,
    opts: &super::Options,
    mut report: Report,
) -> Result<Report, Error> {
    let (uuid, manifest) = (opts.uuid, opts.manifest);
    let n = tree.inodes.len();
    let w = walk(tree, manifest);
    let build = build_time(tree, &w.order);
    let mut plans: Vec<Option<Plan>> = (0..n).map(|_| None).collect();
    for &i in &w.order {
        plans[i] = Some(plan(tree, i, &w, build)?);
    }
    let chunked = plans
        .iter()
        .flatten()
        .any(|p| p.header.layout == DataLayout::ChunkBased);
    let (nids, meta_len) = assign_nids(&w.order, &plans, n);
    if nids[ROOT] > u64::from(u16::MAX) {
        return Err(Error::TooLarge);
    }

    // Directory and symlink blocks go to the data area, their tails inline.
    for &i in &w.order {
        let plan = plans[i].as_mut().expect("planned");
        let (full, tail) = match &tree.inodes[i].body {
            Body::Dir(_) => {
                let blocks = dir_blocks(tree, i, w.parent[i]);
                let mut bytes = Vec::with_capacity(blocks.len() * BLOCK_SIZE as usize);
                for (k, block) in blocks.iter().enumerate() {
                    bytes.extend(encode_dir_block(tree, block, &nids));
                    if k + 1 < blocks.len() {
                        bytes.resize((k + 1) * BLOCK_SIZE as usize, 0);
                    }
                }
                split_tail(bytes, plan.header.layout)
            }
            Body::Symlink(target) => split_tail(target.clone(), plan.header.layout),
            _ => continue,
        };
        if !full.is_empty() {
            plan.header.i_u = area.write_blocks(&full)?;
        }
        plan.extra = tail;
    }

    // The inode area.
    let meta_blkaddr = u32::try_from(area.next_block).map_err(|_| Error::TooLarge)?;
    let mut written = 0u64;
    for &i in &w.order {
        let plan = plans[i].as_mut().expect("planned");
        let at = nids[i] * SLOT_SIZE;
        pad(&mut area.out, at - written)?;
        plan.header.ino = nids[i] as u32;
        let mut bytes = plan.header.encode();
        bytes.extend_from_slice(&plan.xattrs);
        bytes.extend_from_slice(&plan.extra);
        area.out
            .write_all(&bytes)
            .map_err(Error::output("writing inodes"))?;
        pad(&mut area.out, plan.reserve)?;
        written = at + bytes.len() as u64 + plan.reserve;
    }
    debug_assert_eq!(written, meta_len);
    pad(
        &mut area.out,
        meta_len.next_multiple_of(BLOCK_SIZE) - meta_len,
    )?;
    let blocks = u64::from(meta_blkaddr) + meta_len.div_ceil(BLOCK_SIZE);
    let sb = Super {
        root_nid: nids[ROOT] as u16,
        inos: w.order.len() as u64,
        build_time: build.0.cast_unsigned(),
        build_time_nsec: build.1,
        blocks: u32::try_from(blocks).map_err(|_| Error::TooLarge)?,
        meta_blkaddr,
        uuid,
        feature_incompat: if chunked {
            FEATURE_INCOMPAT_CHUNKED_FILE
        } else {
            0
        },
    };
    write_super(&mut area.out, &sb)?;
    report.inodes = w.order.len() as u64;
    report.blocks = blocks;
    if manifest {
        report.manifest = Some(listing(tree, &w, &nids));
    }
    if opts.view {
        report.view = Some(super::view::of_tree(tree, &nids));
    }
    Ok(report)
}

fn write_super<W: Write + Seek>(out: &mut W, sb: &Super) -> Result<(), Error> {
    out.seek(SeekFrom::Start(0))
        .map_err(Error::output("seeking to the superblock"))?;
    let mut head = vec![0u8; SUPER_OFFSET];
    head.extend_from_slice(&sb.encode());
    out.write_all(&head)
        .map_err(Error::output("writing the superblock"))?;
    out.flush().map_err(Error::output("flushing the image"))
}

/// Split directory or symlink bytes into whole blocks for the data area and an inline tail.
fn split_tail(mut bytes: Vec<u8>, layout: DataLayout) -> (Vec<u8>, Vec<u8>) {
    if layout == DataLayout::FlatInline {
        let cut = bytes.len() / BLOCK_SIZE as usize * BLOCK_SIZE as usize;
        let tail = bytes.split_off(cut);
        (bytes, tail)
    } else {
        (bytes, Vec::new())
    }
}

fn pad(out: &mut impl Write, mut n: u64) -> Result<(), Error> {
    static ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..k])
            .map_err(Error::output("writing inodes"))?;
        n -= k as u64;
    }
    Ok(())
}

/// What the writer meant to store, in the reader's terms (for tests and fuzzing).
fn listing(tree: &Tree, w: &Walk, nids: &[u64]) -> Listing {
    let mut out = BTreeMap::new();
    for (path, ino) in &w.paths {
        let inode = &tree.inodes[*ino];
        let a = &inode.attrs;
        let content = match &inode.body {
            Body::Dir(_) => Content::Dir,
            Body::File { size, blake3, .. } => Content::File {
                size: *size,
                blake3: blake3.unwrap_or_default(),
            },
            Body::Symlink(t) => Content::Symlink(t.clone()),
            Body::Device(major, minor) => Content::Device {
                major: *major,
                minor: *minor,
            },
            Body::Fifo => Content::Fifo,
        };
        let xattrs = a
            .xattrs
            .iter()
            .filter(|(k, _)| format::split_xattr_name(k).is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.insert(
            path.clone(),
            Node {
                nid: nids[*ino],
                mode: a.mode,
                uid: a.uid,
                gid: a.gid,
                mtime: a.mtime,
                mtime_nsec: a.mtime_nsec,
                nlink: w.nlink[*ino],
                xattrs,
                content,
            },
        );
    }
    out
}
