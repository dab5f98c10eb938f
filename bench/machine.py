"""What the bench scripts share: the machine's name and load, device syncs, and peak memory.

Peak RSS on Linux: /proc/self/status's VmHWM, which writing "5" to /proc/self/clear_refs
resets to the current RSS, so a measurement can start from "now" (tracemalloc does not see
torch's allocations, and ru_maxrss only ever grows).
"""

import os
import platform
import re

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        found = re.search(rf"{key}:\s+(\d+)", status.read())
    if found is None:
        raise OSError(f"no {key} in /proc/self/status")
    return int(found.group(1))


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # "5" resets VmHWM (the peak RSS) to the current RSS
        return True
    except OSError:
        return False


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read())
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def load_average() -> str:
    try:
        return "load average " + " ".join(f"{load:.2f}" for load in os.getloadavg())
    except OSError:
        return "load average unknown"
