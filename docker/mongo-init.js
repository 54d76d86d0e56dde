// Creates the application's MongoDB user: readWrite on its own database, nothing else.
//
// The official mongo image runs this with mongosh from /docker-entrypoint-initdb.d/, once, when
// the container starts on an EMPTY data volume (after it has created the root user). It never
// runs again: to change these credentials later, change the user by hand (for example
// db.getSiblingDB("social_api").changeUserPassword("social_app", "...")) or start over with
// `docker compose down -v`, which deletes the data.
//
// Reads from the container's environment (see docker-compose.yml and .env.example):
//   MONGO_APP_USERNAME, MONGO_APP_PASSWORD  the user the API connects as
//   MONGODB_DB                              the application's database (default social_api)
// A thrown error stops the container with the message in its log.

const env = process.env;
// These values go into connection strings (MONGODB_URL and others) without escaping.
const URL_SAFE = /^[A-Za-z0-9._~-]+$/;

function refuse(problem) {
  throw new Error(
    `${problem}. Fix it in .env, then remove this half-initialised volume with ` +
      "`docker compose down -v` and start again.",
  );
}

function setting(name, fallback) {
  const value = env[name] || fallback;
  if (!value) refuse(`${name} is not set`);
  if (!URL_SAFE.test(value)) {
    refuse(`${name} may only hold letters, digits and . _ ~ - (it goes into a URL unescaped)`);
  }
  return value;
}

const dbName = setting("MONGODB_DB", "social_api");
const user = setting("MONGO_APP_USERNAME");
const pwd = setting("MONGO_APP_PASSWORD");

for (const name of ["MONGO_INITDB_ROOT_PASSWORD", "MONGO_APP_PASSWORD"]) {
  const value = env[name] || "";
  if (value.toLowerCase().startsWith("change-me")) {
    refuse(`${name} is still the placeholder from .env.example`);
  }
}
if (user === env.MONGO_INITDB_ROOT_USERNAME) {
  refuse("MONGO_APP_USERNAME must differ from MONGO_INITDB_ROOT_USERNAME");
}

const appDb = db.getSiblingDB(dbName);
if (appDb.getUser(user)) {
  print(`mongo-init: user "${user}" already exists on "${dbName}"; left unchanged`);
} else {
  appDb.createUser({ user, pwd, roles: [{ role: "readWrite", db: dbName }] });
  print(`mongo-init: created user "${user}" with readWrite on "${dbName}" only`);
}
