#!/usr/bin/env bash
# patroni_baseline.sh — baseline: how long are writes unavailable when the primary of a
# Patroni-managed PostgreSQL 15 cluster is lost?
#
# Usage:  sudo bash patroni_baseline.sh [ROUNDS]        (default ROUNDS=5)
# Env:    MODES=a,b       which parameter sets to run (comma list):
#                           a = Patroni defaults        ttl 30, loop_wait 10, retry_timeout 10
#                           b = tuned, documented min   ttl 20, loop_wait 2,  retry_timeout 9
#                           c = below documented min    ttl 10, loop_wait 1,  retry_timeout 4
#                               (Patroni 3.0.2's validator has no minimum, so it is accepted)
#                           NAME=TTL/LOOP_WAIT/RETRY_TIMEOUT for a custom set
#         PM_ROUNDS=1     postmaster-only kill -9 rounds per mode (restart in place, not a failover)
#         SEED=1          seed for the random pause before each kill
#         KEEP=1          keep the temp dir (logs, configs, results.json) instead of deleting it
#         RESULTS=path    also copy results.json there
#         HAPROXY_CHECK='inter 3s fall 3 rise 2'
#                         HAProxy's health-check timing (the standard recipe by default); a
#                         tuned run shortens it along with Patroni's ttl
#
# Vendored from /work/shared/bench/patroni_baseline.sh for `stator bench failover`; the only
# change is HAPROXY_CHECK (and --haproxy-check below), so the tuned peer can also detect faster.
#
# Everything runs on 127.0.0.1 under a mktemp -d directory: one etcd (v3 API), three Patroni
# nodes (PostgreSQL as the `postgres` system user), HAProxy in TCP mode health-checking
# Patroni's REST `GET /primary` (standard recipe: inter 3s fall 3 rise 2), and a writer that
# inserts one numbered row every 20 ms through HAProxy (reconnects on error, connect_timeout 2 s).
# Fault = kill -9 of the leader's Patroni and its postmaster in the same instant.
# Outage = time from the kill to the next insert acknowledged by a *different* node via HAProxy.
# Only processes this script started are killed (by pid / by the session ids it created).
set -euo pipefail

ROUNDS=${1:-5}
MODES=${MODES:-a,b}
PM_ROUNDS=${PM_ROUNDS:-1}
SEED=${SEED:-1}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
HAPROXY_CHECK=${HAPROXY_CHECK:-inter 3s fall 3 rise 2}
[[ "$HAPROXY_CHECK" =~ ^[a-z0-9\ ]+$ ]] || { echo "HAPROXY_CHECK: only words and numbers, e.g. 'inter 1s fall 2 rise 1'" >&2; exit 1; }

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[[ "$ROUNDS" =~ ^[0-9]+$ ]] || { echo "ROUNDS must be a number" >&2; exit 1; }

# ---------------------------------------------------------------- install
need=()
for p in patroni etcd-server haproxy; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
[ -x "$PG_BIN/postgres" ] || need+=(postgresql-15)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patroni etcd-server haproxy "${need[@]}" >/dev/null
fi
id postgres >/dev/null 2>&1 || { echo "no postgres system user" >&2; exit 1; }
/usr/bin/python3 -c 'import psycopg2' 2>/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-psycopg2 >/dev/null; }

echo "versions: $(patroni --version 2>&1) | $(etcd --version | head -1) | $(haproxy -v | head -1 | awk '{print $1, $2, $3}') | $("$PG_BIN/postgres" --version)"

# ---------------------------------------------------------------- workspace
T=$(mktemp -d -t patroni_baseline.XXXXXX)
chmod 755 "$T"
SESSIONS="$T/sessions.txt"
: >"$SESSIONS"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  # Safety net: the orchestrator tears down in its own finally-block; here we only kill what is
  # still alive in a session id that the orchestrator recorded as created by this run.
  if [ -s "$SESSIONS" ]; then
    local -A want=()
    local sid st line pid cmd
    while read -r sid _; do want[$sid]=1; done <"$SESSIONS"
    for st in /proc/[0-9]*/stat; do
      line=''
      { IFS= read -r line <"$st"; } 2>/dev/null
      [ -n "$line" ] || continue
      read -r _ _ _ sid _ <<<"${line##*) }"          # state ppid pgrp session
      pid=${st#/proc/}; pid=${pid%/stat}
      cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
      # ours: in a session this run created, or running with this run's unique temp dir in argv
      [ -n "${want[$sid]:-}" ] || [[ "$cmd" == *"$T"* ]] || continue
      case "$cmd" in
        *"$T"*|postgres*|"$PG_BIN"*) kill -9 "$pid" 2>/dev/null && echo "cleanup: killed leftover $pid ($cmd)" >&2 ;;
      esac
    done
  fi
  if [ -n "${RESULTS:-}" ] && [ -f "$T/results.json" ]; then cp "$T/results.json" "$RESULTS"; fi
  if [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
    echo "temp dir kept: $T" >&2
  else
    rm -rf "$T"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- orchestrator
cat >"$T/bench.py" <<'PYEOF'
import argparse, json, os, random, signal, socket, statistics, subprocess, sys, threading, time
import urllib.request, urllib.error
import psycopg2

ap = argparse.ArgumentParser()
ap.add_argument('--dir', required=True)
ap.add_argument('--rounds', type=int, default=5)
ap.add_argument('--modes', default='a,b')
ap.add_argument('--pm-rounds', type=int, default=1)
ap.add_argument('--seed', type=int, default=1)
ap.add_argument('--pg-bin', default='/usr/lib/postgresql/15/bin')
ap.add_argument('--haproxy-check', default='inter 3s fall 3 rise 2')
args = ap.parse_args()
D = args.dir
PG_BIN = args.pg_bin
RNG = random.Random(args.seed)
WRITE_INTERVAL = 0.020      # writer: one insert every 20 ms while healthy
RETRY_INTERVAL = 0.050      # writer: pause after a failed attempt
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

PRESETS = {
    'a': ('defaults', 30, 10, 10),
    'b': ('tuned, documented minimum ttl', 20, 2, 9),
    'c': ('below documented minimum ttl', 10, 1, 4),
}


def log(*a):
    print(time.strftime('%H:%M:%S'), *a, file=sys.stderr, flush=True)


# ------------------------------------------------------------ process bookkeeping
SESS_FILE = os.path.join(D, 'sessions.txt')
tracked_sids = set()


def track_sid(sid, what):
    if sid and sid not in tracked_sids:
        tracked_sids.add(sid)
        with open(SESS_FILE, 'a') as f:
            f.write(f'{sid} {what}\n')


def proc_stat(pid):
    try:
        s = open(f'/proc/{pid}/stat').read()
    except OSError:
        return None
    rest = s[s.rindex(')') + 2:].split()
    return rest[0], int(rest[1]), int(rest[2]), int(rest[3])   # state, ppid, pgrp, session


def cmdline(pid):
    try:
        return open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\0', b' ').decode(errors='replace')
    except OSError:
        return ''


def alive(pid):
    st = proc_stat(pid)
    return st is not None and st[0] not in ('Z', 'X')


def ours(pid):
    c = cmdline(pid)
    return D in c or c.startswith('postgres') or c.startswith(PG_BIN)


def kill_session(sid):
    for e in os.listdir('/proc'):
        if e.isdigit():
            st = proc_stat(int(e))
            if st and st[3] == sid and st[0] != 'Z' and ours(int(e)):
                try:
                    os.kill(int(e), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def rss_kib(pid):
    try:
        for line in open(f'/proc/{pid}/status'):
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def start_proc(cmd, logname, as_postgres=False, env=None):
    lf = open(os.path.join(D, logname), 'ab')
    kw = dict(stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    if as_postgres:
        kw.update(user='postgres', group='postgres', extra_groups=[])
    p = subprocess.Popen(cmd, **kw)
    lf.close()
    track_sid(p.pid, logname)
    return p


def stop_proc(p, sig=signal.SIGTERM, timeout=30):
    if p is None or p.poll() is not None:
        return
    p.send_signal(sig)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


def port_free(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(('127.0.0.1', port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_ports(n):
    # below the ephemeral range so that no outgoing connection can take one meanwhile
    ports = []
    while len(ports) < n:
        p = RNG.randint(15000, 29999)
        if p not in ports and port_free(p):
            ports.append(p)
    return ports


def http_get(port, path, timeout=1.0):
    try:
        with OPENER.open(f'http://127.0.0.1:{port}{path}', timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception:
        return None, None


def wait_for(pred, timeout, what, interval=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise RuntimeError(f'timeout ({timeout}s) waiting for {what}')


def pg(port, sql, params=None, timeout=2):
    conn = psycopg2.connect(host='127.0.0.1', port=port, user='postgres', dbname='postgres',
                            connect_timeout=timeout, application_name='baseline_ctl')
    try:
        conn.autocommit = True
        with conn.cursor() as c:
            c.execute(sql, params)
            return c.fetchall() if c.description else None
    finally:
        conn.close()


def try_pg(port, sql, params=None):
    try:
        pg(port, sql, params)
        return True
    except Exception:
        return False


# ------------------------------------------------------------ writer
class Writer(threading.Thread):
    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.acks = []          # (monotonic time of ack, id, server port that acked)
        self.attempts = 0
        self.errors = 0
        self.last_error = ''
        self.stop_ev = threading.Event()
        self.next_id = 0

    def run(self):
        conn = None
        while not self.stop_ev.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(host='127.0.0.1', port=self.port, user='postgres', dbname='postgres',
                                            connect_timeout=2, application_name='baseline_writer',
                                            options='-c statement_timeout=2000')
                    conn.autocommit = True
                self.next_id += 1
                self.attempts += 1
                with conn.cursor() as c:
                    c.execute('INSERT INTO baseline_writes(id) VALUES (%s) RETURNING inet_server_port()',
                              (self.next_id,))
                    srv = c.fetchone()[0]
                self.acks.append((time.monotonic(), self.next_id, srv))
                self.stop_ev.wait(WRITE_INTERVAL)
            except Exception as e:      # any error: drop the connection and reconnect
                self.errors += 1
                self.last_error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                try:
                    if conn is not None:
                        conn.close()
                except Exception:
                    pass
                conn = None
                self.stop_ev.wait(RETRY_INTERVAL)
        if conn is not None:
            conn.close()

    def first_ack_after(self, t0, exclude_port=None):
        acks, best = self.acks, None        # acks are appended in time order: scan back to t0
        for k in range(len(acks) - 1, -1, -1):
            a = acks[k]
            if a[0] <= t0:
                break
            if a[2] != exclude_port:
                best = a
        return best

    def acked_recently(self, within=1.0):
        return bool(self.acks) and time.monotonic() - self.acks[-1][0] < within


# ------------------------------------------------------------ cluster
class Node:
    def __init__(self, cluster, idx, rest_port, pg_port):
        self.c = cluster
        self.name = f'node{idx}'
        self.rest = rest_port
        self.pgport = pg_port
        self.dir = os.path.join(cluster.dir, self.name)
        self.data = os.path.join(self.dir, 'data')
        self.cfg = os.path.join(self.dir, 'patroni.yml')
        self.proc = None
        self.starts = 0

    def write_config(self, etcd_port):
        ttl, lw, rt = self.c.ttl, self.c.loop_wait, self.c.retry_timeout
        cfg = {
            'scope': self.c.scope, 'namespace': '/patroni_baseline/', 'name': self.name,
            'log': {'level': 'INFO'},
            'restapi': {'listen': f'127.0.0.1:{self.rest}', 'connect_address': f'127.0.0.1:{self.rest}'},
            'etcd3': {'hosts': [f'127.0.0.1:{etcd_port}']},
            'bootstrap': {
                'dcs': {
                    'ttl': ttl, 'loop_wait': lw, 'retry_timeout': rt,
                    'maximum_lag_on_failover': 1048576, 'synchronous_mode': False,
                    'postgresql': {
                        'use_pg_rewind': True, 'use_slots': True,
                        'parameters': {'wal_level': 'replica', 'hot_standby': 'on', 'max_connections': 100,
                                       'max_wal_senders': 10, 'max_replication_slots': 10,
                                       'wal_log_hints': 'on', 'shared_buffers': '32MB'},
                    },
                },
                'initdb': [{'encoding': 'UTF8'}, {'locale': 'C.UTF-8'}, 'data-checksums'],
                'pg_hba': ['local all all trust',
                           'host replication replicator 127.0.0.1/32 trust',
                           'host all all 127.0.0.1/32 trust'],
            },
            'postgresql': {
                'listen': f'127.0.0.1:{self.pgport}', 'connect_address': f'127.0.0.1:{self.pgport}',
                'data_dir': self.data, 'bin_dir': PG_BIN, 'pgpass': os.path.join(self.dir, 'pgpass'),
                'authentication': {'replication': {'username': 'replicator', 'password': 'rep-pass'},
                                   'superuser': {'username': 'postgres', 'password': 'pg-pass'}},
                'parameters': {'unix_socket_directories': self.dir},
                'remove_data_directory_on_rewind_failure': True,
                'remove_data_directory_on_diverged_timelines': True,
            },
            'tags': {'nofailover': False, 'noloadbalance': False, 'clonefrom': False, 'nosync': False},
        }
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chown(self.dir, POSTGRES_UID, POSTGRES_GID)
        with open(self.cfg, 'w') as f:
            json.dump(cfg, f, indent=1)          # JSON is valid YAML
        os.chown(self.cfg, POSTGRES_UID, POSTGRES_GID)

    def start(self):
        env = {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'HOME': self.dir, 'LANG': 'C.UTF-8', 'LC_ALL': 'C.UTF-8'}
        self.starts += 1
        self.proc = start_proc(['/usr/bin/patroni', self.cfg], f'{self.c.scope}-{self.name}.log',
                               as_postgres=True, env=env)

    def postmaster_pid(self):
        try:
            pid = int(open(os.path.join(self.data, 'postmaster.pid')).readline())
        except (OSError, ValueError):
            return None
        if alive(pid) and self.data in cmdline(pid):
            st = proc_stat(pid)
            if st:
                track_sid(st[3], f'postmaster {self.c.scope}/{self.name}')
            return pid
        return None

    def patroni_alive(self):
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    def __init__(self, mode, label, ttl, lw, rt, etcd_port, rest_ports, pg_ports):
        self.mode, self.label = mode, label
        self.ttl, self.loop_wait, self.retry_timeout = ttl, lw, rt
        self.scope = f'bl-{mode}'
        self.dir = os.path.join(D, self.scope)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.etcd_port = etcd_port
        self.nodes = [Node(self, i + 1, rest_ports[i], pg_ports[i]) for i in range(3)]

    def start(self):
        for n in self.nodes:
            n.write_config(self.etcd_port)
        self.nodes[0].start()           # let node1 bootstrap, then the replicas
        wait_for(lambda: http_get(self.nodes[0].rest, '/primary')[0] == 200, 120, 'bootstrap of node1')
        for n in self.nodes[1:]:
            n.start()

    def by_rest(self, port):
        return next(n for n in self.nodes if n.rest == port)

    def cluster_view(self):
        for n in self.nodes:
            if n.patroni_alive():
                code, body = http_get(n.rest, '/cluster')
                if code == 200:
                    return json.loads(body)
        return None

    def leader(self):
        for n in self.nodes:
            if n.patroni_alive() and http_get(n.rest, '/primary')[0] == 200:
                return n
        return None

    def healthy(self, writer=None):
        """3 members running, one leader, 2 replicas streaming from it, writer acking through HAProxy."""
        view = self.cluster_view()
        if not view:
            return False
        m = view.get('members', [])
        if len(m) != 3 or any(x.get('state') not in ('running', 'streaming') for x in m):
            return False
        if sum(1 for x in m if x.get('role') == 'leader') != 1:
            return False
        ld = self.leader()
        if ld is None or not all(n.patroni_alive() and n.postmaster_pid() for n in self.nodes):
            return False
        try:
            r = pg(ld.pgport, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        except Exception:
            return False
        if r[0][0] != 2:
            return False
        if writer is not None and not writer.acked_recently():
            return False
        return ld

    def stop(self):
        for n in self.nodes:                      # graceful first: Patroni stops its postgres
            if n.patroni_alive():
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(60)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait(10)


# ------------------------------------------------------------ rounds
def node_loss_round(cl, writer, rnd, pm_only=False):
    ld = wait_for(lambda: cl.healthy(writer), 300, 'healthy cluster (3 members, 2 streaming, writes ok)', 0.5)
    # random pause so that the kill lands at a random phase of Patroni's loop / HAProxy's check cycle
    time.sleep(1.0 + RNG.uniform(0, max(cl.loop_wait, 3)))
    ld = cl.leader()
    if ld is None:
        raise RuntimeError('leader vanished before the kill')
    pm = ld.postmaster_pid()
    ppid = ld.proc.pid
    survivors = [n for n in cl.nodes if n is not ld]
    last_ack_before = writer.acks[-1][0] if writer.acks else None

    t0 = time.monotonic()
    if not pm_only:
        os.kill(ppid, signal.SIGKILL)
    os.kill(pm, signal.SIGKILL)
    kind = 'postmaster-only' if pm_only else 'node-loss'
    log(f'[{cl.mode}] {kind} round {rnd}: killed {ld.name} '
        f'({"" if pm_only else f"patroni {ppid} + "}postmaster {pm})')

    # watcher: when does a survivor report itself primary (Patroni's own view), for the breakdown
    promoted = {}
    seen_down = [not pm_only]     # postmaster-only: the same node must first stop reporting primary

    def watch():
        targets = [ld] if pm_only else survivors
        while time.monotonic() - t0 < 300 and 't' not in promoted:
            for n in targets:
                ok = http_get(n.rest, '/primary', 0.5)[0] == 200
                if not ok:
                    seen_down[0] = True
                elif seen_down[0]:
                    promoted.setdefault('t', time.monotonic())
                    promoted.setdefault('node', n.name)
                    break
            time.sleep(0.1)
    w = threading.Thread(target=watch, daemon=True)
    if not pm_only:      # (postmaster-only: Patroni's /primary may never leave 200, nothing to time)
        w.start()
    if not pm_only:
        ld.proc.wait(10)                       # reap the killed Patroni

    exclude = None if pm_only else ld.pgport
    first = wait_for(lambda: writer.first_ack_after(t0, exclude), 300, 'first acknowledged write after the kill', 0.02)
    t_ack, ack_id, srv = first
    if not pm_only:
        w.join(5)
    stale = [a for a in writer.acks if a[0] > t0 and a[2] == ld.pgport and not pm_only]
    new_node = next((n.name for n in cl.nodes if n.pgport == srv), str(srv))

    # acknowledged writes (acked by the old primary in the 30 s before the kill, or in flight at the kill
    # and acked just after it by a still-running backend) that are missing after the failover
    lost = None
    acked_old = [i for (t, i, s) in writer.acks if s == ld.pgport and t0 - 30 < t]
    try:
        time.sleep(0.5)
        have = wait_for(lambda: _count_ids(writer.port, acked_old), 30, 'post-failover read', 0.5)
        lost = len(acked_old) - have[0]
    except Exception as e:
        log(f'  could not check lost writes: {e}')

    res = {
        'mode': cl.mode, 'kind': kind, 'round': rnd, 'killed': ld.name,
        'outage_s': round(t_ack - t0, 3),
        'promoted_s': round(promoted['t'] - t0, 3) if 't' in promoted else None,
        'new_primary': new_node,
        'last_ack_before_kill_s': round(t0 - last_ack_before, 3) if last_ack_before else None,
        'acks_from_killed_after_kill': len(stale),
        'last_ack_from_killed_after_kill_s': round(max(a[0] for a in stale) - t0, 3) if stale else None,
        'acked_checked': len(acked_old), 'acked_lost': lost,
        'writer_errors_total': writer.errors,
    }
    log(f'  outage {res["outage_s"]:.3f}s, survivor took leader key after {res["promoted_s"]}s, '
        f'writes resumed on {new_node}, lost acked writes {lost}/{len(acked_old)}')

    if not pm_only:                                # bring the lost node back as a replica
        ld.start()
    t_rejoin = time.monotonic()
    wait_for(lambda: cl.healthy(writer), 300, 'rejoin (3 members streaming)', 0.5)
    res['rejoin_s'] = round(time.monotonic() - t_rejoin, 1)
    log(f'  cluster healthy again after {res["rejoin_s"]}s')
    return res


def _count_ids(port, ids):
    try:
        if not ids:
            return (0,)
        return pg(port, 'SELECT count(*) FROM baseline_writes WHERE id = ANY(%s)', (ids,))[0]
    except Exception:
        return None


def pct(vals, p):
    v = sorted(vals)
    if not v:
        return float('nan')
    k = (len(v) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


# ------------------------------------------------------------ main
import pwd
POSTGRES_UID, POSTGRES_GID = pwd.getpwnam('postgres').pw_uid, pwd.getpwnam('postgres').pw_gid


def parse_modes(s):
    out = []
    for m in s.split(','):
        m = m.strip()
        if not m:
            continue
        if '=' in m:
            name, spec = m.split('=', 1)
            ttl, lw, rt = (int(x) for x in spec.split('/'))
            out.append((name, 'custom', ttl, lw, rt))
        else:
            label, ttl, lw, rt = PRESETS[m]
            out.append((m, label, ttl, lw, rt))
    return out


def main():
    modes = parse_modes(args.modes)
    etcd = haproxy = None
    cl = writer = None
    results, rss = [], []
    try:
        ports = pick_ports(9)
        etcd_c, etcd_p, hap = ports[0], ports[1], ports[2]
        rest_ports, pg_ports = ports[3:6], ports[6:9]
        log(f'ports: etcd {etcd_c}/{etcd_p}, haproxy {hap}, rest {rest_ports}, pg {pg_ports}')

        etcd = start_proc(['/usr/bin/etcd', '--name', 'bl', '--data-dir', os.path.join(D, 'etcd'),
                           '--listen-client-urls', f'http://127.0.0.1:{etcd_c}',
                           '--advertise-client-urls', f'http://127.0.0.1:{etcd_c}',
                           '--listen-peer-urls', f'http://127.0.0.1:{etcd_p}',
                           '--initial-advertise-peer-urls', f'http://127.0.0.1:{etcd_p}',
                           '--initial-cluster', f'bl=http://127.0.0.1:{etcd_p}',
                           '--initial-cluster-state', 'new', '--logger', 'zap', '--log-level', 'warn'],
                          'etcd.log')
        wait_for(lambda: http_get(etcd_c, '/health')[0] == 200, 30, 'etcd health')

        hcfg = os.path.join(D, 'haproxy.cfg')
        servers = '\n'.join(f'    server node{i+1} 127.0.0.1:{pg_ports[i]} maxconn 100 check port {rest_ports[i]}'
                            for i in range(3))
        with open(hcfg, 'w') as f:
            f.write(f"""global
    maxconn 300

defaults
    mode tcp
    retries 2
    timeout client 30m
    timeout connect 4s
    timeout server 30m
    timeout check 5s

listen primary
    bind 127.0.0.1:{hap}
    option httpchk GET /primary
    http-check expect status 200
    default-server {args.haproxy_check} on-marked-down shutdown-sessions
{servers}
""")
        subprocess.run(['/usr/sbin/haproxy', '-c', '-q', '-f', hcfg], check=True)
        haproxy = start_proc(['/usr/sbin/haproxy', '-db', '-f', hcfg], 'haproxy.log')

        for (mode, label, ttl, lw, rt) in modes:
            log(f'=== mode {mode}: {label}: ttl={ttl} loop_wait={lw} retry_timeout={rt}')
            if lw + 2 * rt > ttl:
                log(f'  WARNING: loop_wait + 2*retry_timeout = {lw + 2 * rt} > ttl = {ttl}')
            cl = Cluster(mode, label, ttl, lw, rt, etcd_c, rest_ports, pg_ports)
            t_b = time.monotonic()
            cl.start()
            wait_for(lambda: try_pg(hap, 'CREATE TABLE IF NOT EXISTS baseline_writes '
                                         '(id bigint PRIMARY KEY, ts timestamptz DEFAULT now())'),
                     120, 'table creation through HAProxy', 1.0)
            writer = Writer(hap)
            writer.start()
            wait_for(lambda: cl.healthy(writer), 300, 'initial healthy cluster', 0.5)
            log(f'  cluster up and streaming after {time.monotonic() - t_b:.1f}s')
            for r in range(1, args.rounds + 1):
                results.append(dict(node_loss_round(cl, writer, r), ttl=ttl, loop_wait=lw, retry_timeout=rt))
            for r in range(1, args.pm_rounds + 1):
                results.append(dict(node_loss_round(cl, writer, r, pm_only=True), ttl=ttl, loop_wait=lw,
                                    retry_timeout=rt))
            # RSS of the steady-state processes
            ld = cl.leader()
            rep = next((n for n in cl.nodes if n is not ld and n.patroni_alive()), None)
            entry = {'mode': mode, 'etcd_kib': rss_kib(etcd.pid), 'haproxy_kib': rss_kib(haproxy.pid)}
            if ld:
                entry['patroni_leader'] = (ld.name, rss_kib(ld.proc.pid))
                entry['postmaster_leader_kib'] = rss_kib(ld.postmaster_pid() or 0)
            if rep:
                entry['patroni_replica'] = (rep.name, rss_kib(rep.proc.pid))
            rss.append(entry)
            writer.stop_ev.set()
            writer.join(10)
            entry['writer'] = {'acks': len(writer.acks), 'errors': writer.errors}
            writer = None
            cl.stop()
            cl = None
    finally:
        if writer is not None:
            writer.stop_ev.set()
            writer.join(5)
        if cl is not None:
            try:
                cl.stop()
            except Exception as e:
                log(f'cluster stop: {e}')
        stop_proc(haproxy)
        stop_proc(etcd)
        for sid in list(tracked_sids):          # anything left in sessions we created (orphaned postgres)
            kill_session(sid)
        for e in os.listdir('/proc'):          # and any process started with this run's temp dir in argv
            if e.isdigit() and int(e) != os.getpid() and D in cmdline(int(e)) and 'bench.py' not in cmdline(int(e)):
                try:
                    os.kill(int(e), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        with open(os.path.join(D, 'results.json'), 'w') as f:
            json.dump({'rounds': results, 'rss': rss}, f, indent=1)

    # ---------------------------------------------------------------- report
    print()
    print('RESULTS (outage = kill -9 -> next insert acknowledged through HAProxy)')
    for (mode, label, ttl, lw, rt) in modes:
        print(f'mode {mode} ({label}): ttl={ttl} loop_wait={lw} retry_timeout={rt} synchronous_mode=false')
        nl = [r for r in results if r['mode'] == mode and r['kind'] == 'node-loss']
        for r in nl:
            print(f'  node-loss round {r["round"]}: outage {r["outage_s"]:7.3f} s   (killed {r["killed"]}, '
                  f'writes resumed on {r["new_primary"]}, its leader key after {r["promoted_s"]} s, '
                  f'lost acked writes {r["acked_lost"]}/{r["acked_checked"]}, rejoin {r["rejoin_s"]} s'
                  + (f', {r["acks_from_killed_after_kill"]} insert(s) in flight at the kill acked by the killed '
                     f'node up to {r["last_ack_from_killed_after_kill_s"]} s later'
                     if r['acks_from_killed_after_kill'] else '') + ')')
        if nl:
            o = [r['outage_s'] for r in nl]
            pr = [r['promoted_s'] for r in nl if r['promoted_s'] is not None]
            print(f'  node-loss: n={len(o)} p50 {pct(o, 50):.3f} s  max {max(o):.3f} s  min {min(o):.3f} s'
                  + (f'   | survivor took leader key (its /primary=200) p50 {pct(pr, 50):.3f} s max {max(pr):.3f} s'
                     if pr else ''))
        for r in [r for r in results if r['mode'] == mode and r['kind'] == 'postmaster-only']:
            print(f'  postmaster-only kill round {r["round"]}: outage {r["outage_s"]:7.3f} s   '
                  f'(killed {r["killed"]}, writes resumed on {r["new_primary"]}: Patroni restarted it in place, '
                  f'no failover; lost acked writes {r["acked_lost"]}/{r["acked_checked"]})')
    for e in rss:
        pl = e.get('patroni_leader')
        prp = e.get('patroni_replica')
        print(f'RSS mode {e["mode"]}: patroni leader ({pl[0] if pl else "?"}) {pl[1] if pl else "?"} KiB, '
              f'patroni replica ({prp[0] if prp else "?"}) {prp[1] if prp else "?"} KiB, '
              f'etcd {e["etcd_kib"]} KiB, haproxy {e["haproxy_kib"]} KiB, '
              f'postmaster(leader) {e.get("postmaster_leader_kib")} KiB')
    for e in rss:
        w = e.get('writer', {})
        print(f'writer mode {e["mode"]}: {w.get("acks")} acknowledged inserts, {w.get("errors")} failed attempts')


if __name__ == '__main__':
    main()
PYEOF

cd "$T"
/usr/bin/python3 -u "$T/bench.py" --dir "$T" --rounds "$ROUNDS" --modes "$MODES" \
  --pm-rounds "$PM_ROUNDS" --seed "$SEED" --pg-bin "$PG_BIN" --haproxy-check "$HAPROXY_CHECK"
