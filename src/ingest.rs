//! Temp file → hashed → fsynced → published: the only place blobs are created. Never edits the index.
