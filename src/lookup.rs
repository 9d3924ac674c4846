//! Digest-prefix table and canonical-reference map over index entries; never reads files.
