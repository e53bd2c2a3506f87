"""cluster.protocol: Dask's comms between scheduler and GPU workers (tcp, or dask-cuda's UCX on real GPUs)."""

from __future__ import annotations

import pytest
from conftest import local_config, nvml_sees_a_gpu, repo_config_data

from altlas_dask.config import ConfigError, build_config
from altlas_dask.gpus.errors import GpuUnavailableError
from altlas_dask.ops.launcher import cuda_cluster_options, start_cluster


def with_cluster(**cluster) -> dict:
    data = repo_config_data()
    data["accounting"]["database"] = ":memory:"
    data["cluster"] = {**data["cluster"], **cluster}
    return data


def test_tcp_is_the_default_and_ucx_is_accepted_for_real_gpus():
    assert build_config(repo_config_data()).cluster.protocol == "tcp"
    ucx = build_config(with_cluster(protocol="ucx", enable_nvlink=True)).cluster
    assert (ucx.protocol, ucx.enable_nvlink) == ("ucx", True)
    assert ucx.connect_address() == "ucx://127.0.0.1:8786"
    assert build_config(repo_config_data()).cluster.connect_address() == "127.0.0.1:8786"
    explicit = build_config(with_cluster(protocol="ucx", scheduler_address="ucx://10.0.0.5:8786")).cluster
    assert explicit.connect_address() == "ucx://10.0.0.5:8786"


@pytest.mark.parametrize(
    ("cluster", "other", "message"),
    [
        ({"protocol": "udp"}, {}, r"cluster.protocol: Input should be 'tcp' or 'ucx' \(got 'udp'\)"),
        ({"protocol": "ucx", "simulate": 4}, {}, r"cluster.protocol='ucx' needs real GPUs .*cluster.simulate=4"),
        ({"protocol": "ucx"}, {"gpu": {"detection": {"enabled": False}}}, r"cluster.protocol='ucx' needs real GPUs"),
        ({"protocol": "ucx"}, {"security": {"identity": "tls"}}, r"cluster.protocol='ucx' cannot carry .*'tls'"),
        ({"enable_nvlink": True}, {}, r"cluster.enable_nvlink=True needs cluster.protocol: ucx \(got 'tcp'\)"),
    ],
)
def test_a_protocol_that_cannot_work_is_refused_naming_key_and_value(cluster, other, message):
    data = with_cluster(**cluster)
    for section, values in other.items():
        data[section] = {**data.get(section, {}), **values}
    with pytest.raises(ConfigError, match=message):
        build_config(data)


def test_the_launcher_passes_ucx_through_to_local_cuda_cluster():
    common = {"host": "127.0.0.1", "scheduler_port": 0, "threads_per_worker": 8}
    assert cuda_cluster_options(build_config(repo_config_data()), common) == common  # tcp: dask-cuda's default
    ucx = build_config(with_cluster(protocol="ucx"))
    assert cuda_cluster_options(ucx, common, ucx_installed=True) == {**common, "protocol": "ucx"}
    nvlink = build_config(with_cluster(protocol="ucx", enable_nvlink=True))
    assert cuda_cluster_options(nvlink, common, ucx_installed=True) == {
        **common,
        "protocol": "ucx",
        "enable_nvlink": True,
    }
    with pytest.raises(GpuUnavailableError, match="cluster.protocol='ucx' needs .* distributed-ucxx-cu12"):
        cuda_cluster_options(ucx, common, ucx_installed=False)


@pytest.mark.skipif(nvml_sees_a_gpu(), reason="with a real GPU this would start a UCX cluster")
def test_ucx_without_a_gpu_stops_before_starting_anything():
    config = local_config(with_cluster(protocol="ucx"))
    with pytest.raises(ConfigError, match="cluster.protocol='ucx' needs real GPUs and dask-cuda, but NVML sees none"):
        start_cluster(config)
