"""Runs Koppeltaal's reference auth server (vendored, unmodified) for koppeltaal-auth's tests.

    python serve.py <source dir> <sqlite file> <clients.json> <token lifetime s>

The server is configured the way `create_app` takes a configuration in its own tests (with
`TESTING`, which skips its start-up check against a FHIR server), with a fresh SQLite database,
and the clients in `clients.json` registered through its own `SmartService` model:
`[{"client_id": ..., "status": "APPROVED" | "PENDING", "jwks_endpoint": ... | "public_key": ...}]`.
It binds a free port on 127.0.0.1 itself (so that no other process can take the port between its
choice and its use), prints `listening <port>` on its standard output, serves there with waitress
(as its entrypoint does) and exits when its standard input closes, so that it never outlives the
test process that started it.
"""

import json
import os
import socket
import sys
import threading


def watch_parent():
    """Exits the process once the parent closes our standard input (it ended, or died)."""
    sys.stdin.read()
    os._exit(0)


def main():
    source, db_path, clients_path, lifetime = sys.argv[1:5]
    threading.Thread(target=watch_parent, daemon=True).start()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sys.path.insert(0, source)
    from application import create_app
    from application.database import db
    from application.oauth_server.model import SmartService, SmartServiceStatus
    from waitress import serve

    issuer = f"http://127.0.0.1:{port}"
    # Every setting its own instance/config.py has, with its defaults; then ours.
    import runpy
    config = {
        name: value
        for name, value in runpy.run_path(os.path.join(source, "instance", "config.py")).items()
        if name.isupper()
    }
    config.update({
        "TESTING": True,
        "SECRET_KEY": "koppeltaal-auth-tests",
        "SQLALCHEMY_TRACK_MODIFICATIONS": False,
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{db_path}",
        "OIDC_SMART_CONFIG_ENABLED": True,
        "OIDC_SMART_CONFIG_TOKEN_ENDPOINT": f"{issuer}/oauth2/token",
        "OIDC_SMART_CONFIG_SIGNING_ALGS": ["RS384", "ES384", "RS512"],
        "OIDC_SMART_CONFIG_CACHING_SECONDS": 30,
        "OIDC_JWT_EXP_TIME_ACCESS_TOKEN": int(lifetime),
        "OIDC_JWT_PUBLIC_KEY": "",
        "OIDC_JWT_PRIVATE_KEY": "",
        "AUTH_SERVER_ISS": issuer,
        "FHIR_CLIENT_SERVERURL": f"{issuer}/fhir",
        "IRMA_CLIENT_SERVER_URL": "http://127.0.0.1:9/irma",
        "IDP_AUTHORIZE_CLIENT_ID": "koppeltaal-auth-tests",
        "IDP_AUTHORIZE_REDIRECT_URL": f"{issuer}/idp/oidc/code",
        "IDP_AUTHORIZE_ENDPOINT": "http://127.0.0.1:9/idp/authorize",
        "IDP_TOKEN_ENDPOINT": "http://127.0.0.1:9/idp/token",
        "IDP_AUTHORIZE_CLIENT_SECRET": "koppeltaal-auth-tests",
        "SMART_BACKEND_SERVICE_CLIENT_ID": "koppeltaal-auth-tests-device",
        "SMART_BACKEND_SERVICE_DEVICE_ID": "Device/koppeltaal-auth-tests-device",
    })
    app = create_app(config)
    with open(clients_path) as file:
        clients = json.load(file)
    with app.app_context():
        for client in clients:
            db.session.add(SmartService(
                created_by="koppeltaal-auth-tests",
                client_id=client["client_id"],
                status=SmartServiceStatus[client.get("status", "APPROVED")],
                jwks_endpoint=client.get("jwks_endpoint"),
                public_key=client.get("public_key"),
                fhir_store_device_id=client["client_id"],
            ))
        db.session.commit()
    print(f"listening {port}", flush=True)
    serve(app, sockets=[listener], threads=8, _quiet=True)


if __name__ == "__main__":
    main()
