"""PROXY_CONFIG and the mesh file (ISTIO_COMPAT §18), as upstream reads them: a YAML or JSON
ProxyConfig in the environment merged over `defaultConfig` of `./etc/istio/config/mesh` (relative
to the working directory), each field a default for a setting the environment leaves unset:
discoveryAddress for XDS_ADDRESS, proxyAdminPort and statsPort for the admin and stats listeners,
concurrency for the data-plane threads, proxyMetadata for the xDS node metadata."""
import json
import os

import pytest

from daemon import free_ports, http, wait_for

pytest.importorskip("grpc")
import xds_double as x  # noqa: E402


def write_mesh(directory, text):
    path = os.path.join(directory, "etc", "istio", "config")
    os.makedirs(path)
    with open(os.path.join(path, "mesh"), "w") as f:
        f.write(text)


def test_proxy_config_over_the_mesh_file_configures_the_daemon(start_daemon, xds, tmp_path):
    """The mesh file names istiod and the stats port, PROXY_CONFIG the admin port, the threads
    and metadata that override the file's; the environment's own ISTIO_META_ wins over both."""
    admin, stats = free_ports(2)
    write_mesh(str(tmp_path), f"""
defaultConfig:
  discoveryAddress: https://127.0.0.1:{xds.port}
  statsPort: {stats}
  drainDuration: 45s           # an Envoy sidecar's field: ignored
  proxyMetadata:
    ISTIO_META_FROM_MESH: mesh
    SHARED: mesh
    OVERRIDDEN: mesh
trustDomain: cluster.local     # not ztunnel's: ignored
""")
    proxy_config = json.dumps({"proxyAdminPort": admin, "concurrency": 3,
                               "proxyMetadata": {"ISTIO_META_SHARED": "proxy-config", "OVERRIDDEN": "proxy-config"}})
    daemon = start_daemon(local_config=False, cwd=str(tmp_path), hbone_wildcard=True, extra_env={
        "PROXY_CONFIG": proxy_config, "ISTIO_META_OVERRIDDEN": "environment",
        "ZTUNNEL_ADMIN_ADDR": None, "ZTUNNEL_STATS_ADDR": None,
        "XDS_ROOT_CA": xds.root_pem_path, "AUTH_TOKEN": "xds-token", "POD_NAME": "ztunnel-abc",
        "POD_NAMESPACE": "istio-system", "INSTANCE_IP": "10.0.0.42", "NODE_NAME": "node-a",
        "ISTIO_META_ISTIO_VERSION": "1.27.0"})
    daemon.ports["admin"], daemon.ports["stats"] = admin, stats

    first = xds.wait_for(lambda _, r: r["initial"] and r["type_url"] == x.ADDRESS, 30)
    metadata = first["node"]["metadata"]
    assert metadata["FROM_MESH"] == "mesh", metadata
    assert metadata["SHARED"] == "proxy-config", metadata
    assert metadata["OVERRIDDEN"] == "environment", metadata
    daemon.wait_ready()
    assert "data-plane threads threads=3 in_all=3" in daemon.log()
    status, body = http(admin, "/config_dump")
    assert status == 200
    config = json.loads(body)["config"]
    assert config["xdsAddress"] == f"https://127.0.0.1:{xds.port}", config
    status, body = http(stats, "/metrics")
    assert status == 200 and "istio_build" in body


@pytest.mark.parametrize("env,mesh,reason", [
    ({"PROXY_CONFIG": "concurrency: lots"}, None,
     'invalid PROXY_CONFIG: concurrency: expected a thread count 0-65535, got "lots" (line 1)'),
    ({"PROXY_CONFIG": '{"proxyMetadata": {"BAD-NAME": "x"}}'}, None,
     "invalid ISTIO_META_BAD-NAME (PROXY_CONFIG proxyMetadata.BAD-NAME)"),
    ({}, "defaultConfig:\n  proxyAdminPort: 0\n",
     'invalid mesh config ./etc/istio/config/mesh: defaultConfig.proxyAdminPort: expected a port 1-65535, got "0" (line 2)'),
    ({}, "defaultConfig: [a]\n", "defaultConfig must be a mapping, got a sequence"),
])
def test_a_refused_proxy_config_stops_the_start_with_the_reason(start_daemon, tmp_path, env, mesh, reason):
    if mesh is not None:
        write_mesh(str(tmp_path), mesh)
    daemon = start_daemon(cwd=str(tmp_path), extra_env=env)
    assert daemon.wait(timeout=30) == 1
    assert reason in daemon.log(), daemon.log()
