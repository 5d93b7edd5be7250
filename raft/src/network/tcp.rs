//! TCP transport: placeholder replaced below.
