"""The course's social network API on FastAPI, Beanie 2 and MongoDB."""
