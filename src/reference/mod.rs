//! OCI image references (DESIGN.md §7): value type and hand-written parser; no I/O.
