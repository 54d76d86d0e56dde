"""The embedded development store: a MongoDB emulator (mongoeco) behind its wire protocol.

The service starts it when MONGODB_URL is unset, and reaches it with the same PyMongo client
it would use for a real MongoDB. It is a convenience for a first run and for tests, installed
as the `devstore` extra; the service itself never imports the emulator.
"""

from devstore.store import DB_FILE, LOCK_FILE, EmbeddedStore, Storage, StoreError, banner

__all__ = ["DB_FILE", "LOCK_FILE", "EmbeddedStore", "Storage", "StoreError", "banner"]
