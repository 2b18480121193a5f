//! The only module that speaks nftables: one owned `inet kvnet` table, one atomic batch per change.
