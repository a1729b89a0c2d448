//! etcd and moto server processes (owned by the dcs work).
