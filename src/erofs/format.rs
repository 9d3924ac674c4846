//! EROFS on-disk structures, as laid out in the Linux kernel's `fs/erofs/erofs_fs.h`. Everything
//! is little-endian. Only what Linux 5.15 mounts is written: 4 KiB blocks, uncompressed inodes
//! (flat plain, flat inline, chunk-based with a block map), inline xattrs (no shared xattrs, no
//! long-prefix table), no superblock checksum, no compression. Pure encoding: no I/O here.

/// Block size: `blkszbits` 12. Linux 5.15 only mounts images whose block size is the page size.
pub const BLOCK_SIZE: u64 = 4096;
/// log2 of [`BLOCK_SIZE`].
pub const BLOCK_BITS: u8 = 12;
/// Byte offset of the superblock (`EROFS_SUPER_OFFSET`).
pub const SUPER_OFFSET: usize = 1024;
/// `EROFS_SUPER_MAGIC_V1`.
pub const MAGIC: u32 = 0xE0F5_E1E2;
/// Size of the superblock as written (`sb_extslots` 0).
pub const SUPER_SIZE: usize = 128;
/// `EROFS_FEATURE_INCOMPAT_CHUNKED_FILE` (Linux 5.15).
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x4;
/// Inodes are addressed in 32-byte slots: `nid = (offset - meta_blkaddr * 4096) / 32`.
pub const SLOT_SIZE: u64 = 32;
/// `EROFS_NULL_ADDR`: a hole in a chunk block map.
pub const NULL_ADDR: u32 = u32::MAX;
/// Longest file name a directory entry can hold (`EROFS_NAME_LEN`).
pub const NAME_LEN: usize = 255;
/// Size of `struct erofs_dirent`.
pub const DIRENT_SIZE: usize = 12;
/// Size of `struct erofs_inode_compact`.
pub const COMPACT_SIZE: usize = 32;
/// Size of `struct erofs_inode_extended`.
pub const EXTENDED_SIZE: usize = 64;
/// Size of `struct erofs_xattr_ibody_header`.
pub const XATTR_HEADER_SIZE: usize = 12;
/// `EROFS_CHUNK_FORMAT_INDEXES`: 8-byte chunk indexes instead of a 4-byte block map.
pub const CHUNK_FORMAT_INDEXES: u16 = 0x20;
/// `EROFS_CHUNK_FORMAT_BLKBITS_MASK`.
pub const CHUNK_BLKBITS_MASK: u16 = 0x1f;

/// `i_format` bits 1..3 (`EROFS_I_DATALAYOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLayout {
    /// `EROFS_INODE_FLAT_PLAIN`: `ceil(size / 4096)` blocks from `raw_blkaddr`.
    FlatPlain = 0,
    /// `EROFS_INODE_FLAT_INLINE`: full blocks from `raw_blkaddr`, the tail right after the
    /// inode's xattrs, in the same block.
    FlatInline = 2,
    /// `EROFS_INODE_CHUNK_BASED`: a chunk map after the xattrs (Linux 5.15).
    ChunkBased = 4,
}

impl DataLayout {
    /// Decode `i_format`'s layout bits; compressed layouts (1, 3) are not supported.
    #[must_use]
    pub fn from_format(format: u16) -> Option<Self> {
        match (format >> 1) & 0x7 {
            0 => Some(Self::FlatPlain),
            2 => Some(Self::FlatInline),
            4 => Some(Self::ChunkBased),
            _ => None,
        }
    }
}

/// `EROFS_FT_*`: the file type recorded in a directory entry.
#[must_use]
pub fn file_type(mode: u32) -> u8 {
    match mode & S_IFMT {
        S_IFREG => 1,
        S_IFDIR => 2,
        S_IFCHR => 3,
        S_IFBLK => 4,
        S_IFIFO => 5,
        S_IFSOCK => 6,
        S_IFLNK => 7,
        _ => 0,
    }
}

/// `S_IFMT` and the file type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170_000;
/// Socket.
pub const S_IFSOCK: u32 = 0o140_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Block device.
pub const S_IFBLK: u32 = 0o060_000;
/// Directory.
pub const S_IFDIR: u32 = 0o040_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;
/// FIFO.
pub const S_IFIFO: u32 = 0o010_000;

/// The superblock fields imgstore sets; the rest are zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Super {
    /// `root_nid` (16 bits on disk: the root must be among the first 65536 slots).
    pub root_nid: u16,
    /// `inos`: number of inodes.
    pub inos: u64,
    /// `build_time` / `build_time_nsec`: the mtime of every compact inode.
    pub build_time: u64,
    /// Nanoseconds of `build_time`.
    pub build_time_nsec: u32,
    /// `blocks`: image size in blocks.
    pub blocks: u32,
    /// `meta_blkaddr`: where nid 0 lives.
    pub meta_blkaddr: u32,
    /// `uuid`.
    pub uuid: [u8; 16],
    /// `feature_incompat`.
    pub feature_incompat: u32,
}

impl Super {
    /// `struct erofs_super_block`, 128 bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; SUPER_SIZE] {
        let mut b = [0u8; SUPER_SIZE];
        put32(&mut b, 0, MAGIC);
        // 4: checksum, 8: feature_compat (no SB_CHKSUM): 0.
        b[12] = BLOCK_BITS;
        // 13: sb_extslots 0.
        put16(&mut b, 14, self.root_nid);
        put64(&mut b, 16, self.inos);
        put64(&mut b, 24, self.build_time);
        put32(&mut b, 32, self.build_time_nsec);
        put32(&mut b, 36, self.blocks);
        put32(&mut b, 40, self.meta_blkaddr);
        // 44: xattr_blkaddr 0 (no shared xattrs).
        b[48..64].copy_from_slice(&self.uuid);
        // 64: volume_name, empty.
        put32(&mut b, 80, self.feature_incompat);
        // 84..: compression, devices, dirblkbits (0 = block size), reserved: 0.
        b
    }

    /// Parse and check a superblock (`bytes` starts at [`SUPER_OFFSET`]).
    #[must_use]
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < SUPER_SIZE || get32(b, 0) != MAGIC || b[12] != BLOCK_BITS {
            return None;
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[48..64]);
        Some(Self {
            root_nid: get16(b, 14),
            inos: get64(b, 16),
            build_time: get64(b, 24),
            build_time_nsec: get32(b, 32),
            blocks: get32(b, 36),
            meta_blkaddr: get32(b, 40),
            uuid,
            feature_incompat: get32(b, 80),
        })
    }
}

/// One inode's fixed part, independent of compact/extended encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeHeader {
    /// Data layout.
    pub layout: DataLayout,
    /// `i_xattr_icount`: 0, or `(xattr ibody size - 12) / 4 + 1`.
    pub xattr_icount: u16,
    /// Full `st_mode`.
    pub mode: u32,
    /// `i_nlink`.
    pub nlink: u32,
    /// `i_size`.
    pub size: u64,
    /// `i_u`: `raw_blkaddr`, `rdev`, or the chunk format (low 16 bits).
    pub i_u: u32,
    /// `i_ino`, for 32-bit `stat`.
    pub ino: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds; ignored by compact inodes, which take `build_time`).
    pub mtime: u64,
    /// Nanoseconds of `mtime`.
    pub mtime_nsec: u32,
    /// Whether this is a 64-byte extended inode.
    pub extended: bool,
}

impl InodeHeader {
    /// Whether the compact form holds every field, given the superblock's build time.
    #[must_use]
    pub fn fits_compact(&self, build_time: u64, build_time_nsec: u32) -> bool {
        self.uid <= 0xffff
            && self.gid <= 0xffff
            && self.nlink <= 0xffff
            && u32::try_from(self.size).is_ok()
            && self.mtime == build_time
            && self.mtime_nsec == build_time_nsec
    }

    /// Size of the encoded inode.
    #[must_use]
    #[allow(clippy::len_without_is_empty)] // an inode is never empty
    pub fn len(&self) -> usize {
        if self.extended {
            EXTENDED_SIZE
        } else {
            COMPACT_SIZE
        }
    }

    /// `struct erofs_inode_compact` or `struct erofs_inode_extended`.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let format = u16::from(self.extended) | ((self.layout as u16) << 1);
        let mut b = vec![0u8; self.len()];
        put16(&mut b, 0, format);
        put16(&mut b, 2, self.xattr_icount);
        put16(&mut b, 4, self.mode as u16);
        if self.extended {
            // 6: i_reserved.
            put64(&mut b, 8, self.size);
            put32(&mut b, 16, self.i_u);
            put32(&mut b, 20, self.ino);
            put32(&mut b, 24, self.uid);
            put32(&mut b, 28, self.gid);
            put64(&mut b, 32, self.mtime);
            put32(&mut b, 40, self.mtime_nsec);
            put32(&mut b, 44, self.nlink);
            // 48..64: reserved.
        } else {
            put16(&mut b, 6, self.nlink as u16);
            put32(&mut b, 8, self.size as u32);
            // 12: i_reserved (newer kernels: mtime high bits / nb; 0 is "none").
            put32(&mut b, 16, self.i_u);
            put32(&mut b, 20, self.ino);
            put16(&mut b, 24, self.uid as u16);
            put16(&mut b, 26, self.gid as u16);
            // 28: i_reserved2 (newer kernels: mtime offset from build_time; 0 keeps it).
        }
        b
    }

    /// Decode an inode; `b` must hold at least 64 bytes or the rest of the image. Compact inodes
    /// take the superblock's build time as their mtime.
    #[must_use]
    pub fn decode(b: &[u8], sb: &Super) -> Option<Self> {
        if b.len() < COMPACT_SIZE {
            return None;
        }
        let format = get16(b, 0);
        let extended = match format & 1 {
            0 => false,
            _ if b.len() >= EXTENDED_SIZE => true,
            _ => return None,
        };
        let layout = DataLayout::from_format(format)?;
        let mut h = Self {
            layout,
            xattr_icount: get16(b, 2),
            mode: u32::from(get16(b, 4)),
            nlink: 0,
            size: 0,
            i_u: get32(b, 16),
            ino: get32(b, 20),
            uid: 0,
            gid: 0,
            mtime: sb.build_time,
            mtime_nsec: sb.build_time_nsec,
            extended,
        };
        if extended {
            h.size = get64(b, 8);
            h.uid = get32(b, 24);
            h.gid = get32(b, 28);
            h.mtime = get64(b, 32);
            h.mtime_nsec = get32(b, 40);
            h.nlink = get32(b, 44);
        } else {
            h.nlink = u32::from(get16(b, 6));
            h.size = u64::from(get32(b, 8));
            h.uid = u32::from(get16(b, 24));
            h.gid = u32::from(get16(b, 26));
        }
        Some(h)
    }
}

/// Size of an inode's inline xattr area for `icount` (`erofs_xattr_ibody_size`).
#[must_use]
pub fn xattr_ibody_size(icount: u16) -> usize {
    if icount == 0 {
        0
    } else {
        XATTR_HEADER_SIZE + (usize::from(icount) - 1) * 4
    }
}

/// The xattr name prefixes EROFS knows (`e_name_index`), longest first so `system.posix_acl_*`
/// (whose name is the whole prefix) wins over nothing else.
pub const XATTR_PREFIXES: [(u8, &[u8]); 5] = [
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (1, b"user."),
    (4, b"trusted."),
    (6, b"security."),
];

/// Split an xattr name into its EROFS prefix index and suffix; `None` for a namespace EROFS
/// cannot store.
#[must_use]
pub fn split_xattr_name(name: &[u8]) -> Option<(u8, &[u8])> {
    XATTR_PREFIXES.iter().find_map(|&(index, prefix)| {
        let suffix = name.strip_prefix(prefix)?;
        let whole_name = index == 2 || index == 3;
        (whole_name == suffix.is_empty()).then_some((index, suffix))
    })
}

/// The full name of an xattr from its prefix index and suffix.
#[must_use]
pub fn join_xattr_name(index: u8, suffix: &[u8]) -> Option<Vec<u8>> {
    let (_, prefix) = XATTR_PREFIXES.iter().find(|(i, _)| *i == index)?;
    let mut name = prefix.to_vec();
    name.extend_from_slice(suffix);
    Some(name)
}

/// Encode an inline xattr area (header + 4-byte-aligned `struct erofs_xattr_entry`s). `xattrs`
/// are `(index, suffix, value)` with suffix ≤ 255 bytes and value ≤ 65535 bytes. Returns the
/// bytes and `i_xattr_icount`, or `None` if the area would not fit the 16-bit count.
#[must_use]
pub fn encode_xattrs(xattrs: &[(u8, &[u8], &[u8])]) -> Option<(Vec<u8>, u16)> {
    if xattrs.is_empty() {
        return Some((Vec::new(), 0));
    }
    let mut b = vec![0u8; XATTR_HEADER_SIZE];
    for (index, suffix, value) in xattrs {
        b.push(u8::try_from(suffix.len()).ok()?);
        b.push(*index);
        b.extend_from_slice(&u16::try_from(value.len()).ok()?.to_le_bytes());
        b.extend_from_slice(suffix);
        b.extend_from_slice(value);
        b.resize(b.len().next_multiple_of(4), 0);
    }
    let icount = u16::try_from((b.len() - XATTR_HEADER_SIZE) / 4 + 1).ok()?;
    Some((b, icount))
}

/// Linux's `new_encode_dev`: 12-bit major, 20-bit minor; `None` if they do not fit.
#[must_use]
pub fn encode_dev(major: u32, minor: u32) -> Option<u32> {
    if major > 0xfff || minor > 0xf_ffff {
        return None;
    }
    Some((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// Linux's `new_decode_dev`, as `(major, minor)`.
#[must_use]
pub fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

/// Append one `struct erofs_dirent` (nid, name offset within the block, file type).
pub fn put_dirent(b: &mut Vec<u8>, nid: u64, nameoff: u16, file_type: u8) {
    b.extend_from_slice(&nid.to_le_bytes());
    b.extend_from_slice(&nameoff.to_le_bytes());
    b.push(file_type);
    b.push(0);
}

/// Little-endian helpers over fixed offsets (callers check lengths).
pub fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
/// See [`put16`].
pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
/// See [`put16`].
pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
/// See [`put16`].
#[must_use]
pub fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
/// See [`put16`].
#[must_use]
pub fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
/// See [`put16`].
#[must_use]
pub fn get64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_round_trip_like_linux() {
        assert_eq!(encode_dev(1, 3), Some(0x103));
        assert_eq!(encode_dev(8, 0x12345), Some(0x1230_0845));
        for (ma, mi) in [(0, 0), (1, 3), (8, 0x12345), (0xfff, 0xf_ffff)] {
            assert_eq!(decode_dev(encode_dev(ma, mi).unwrap()), (ma, mi));
        }
        assert_eq!(encode_dev(0x1000, 0), None);
    }

    #[test]
    fn xattr_names_split_by_namespace() {
        assert_eq!(split_xattr_name(b"user.foo"), Some((1, &b"foo"[..])));
        assert_eq!(
            split_xattr_name(b"security.capability"),
            Some((6, &b"capability"[..]))
        );
        assert_eq!(
            split_xattr_name(b"system.posix_acl_access"),
            Some((2, &b""[..]))
        );
        assert_eq!(split_xattr_name(b"system.nfs4_acl"), None);
        assert_eq!(split_xattr_name(b"system.posix_acl_accessx"), None);
        assert_eq!(
            join_xattr_name(4, b"overlay.opaque").unwrap(),
            b"trusted.overlay.opaque"
        );
    }

    #[test]
    fn superblock_round_trips() {
        let sb = Super {
            root_nid: 1,
            inos: 7,
            build_time: 1_700_000_000,
            build_time_nsec: 5,
            blocks: 9,
            meta_blkaddr: 3,
            uuid: [7; 16],
            feature_incompat: FEATURE_INCOMPAT_CHUNKED_FILE,
        };
        assert_eq!(Super::decode(&sb.encode()), Some(sb));
    }
}
