//! Cloud images: format checks, qemu-img hygiene and conversion, URL download.
