#!/usr/bin/env python3
"""The bare-SQLite floor of S3: the rows the relay writes for each UpMessage, with nothing else.

Per UpMessage, as in S3 (docs/BENCHMARKS.md, "What limits each figure"): its up row, the robot
answer's down row, the up.result event, two outbox rows (the event and the DownMessage) and their
deletion once published, the session's touch. Batches of B messages over K = 200 users, one
transaction each, on the relay's schema (migrations/sqlite), WAL and synchronous = FULL like the
relay. Python's sqlite3 with executemany: SQLite does the work, in one process, with the cores to
itself. Not a benchmark of the relay: the ceiling any relay on this schema and disk would have.

    python3 benches/floor/sqlite_s3_rows.py [B=100] [M=50000] [DIR=/tmp/ccrelay-floor] [--without MIGRATION]
"""
import glob, itertools, json, os, sqlite3, sys, time, uuid

args = sys.argv[1:]
without = None
if "--without" in args:
    i = args.index("--without")
    without = args[i + 1]
    del args[i : i + 2]
sys.argv[1:] = args
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "migrations", "sqlite")
B=int(sys.argv[1]) if len(sys.argv)>1 else 100
M=int(sys.argv[2]) if len(sys.argv)>2 else 50000
d=sys.argv[3] if len(sys.argv)>3 else "/tmp/ccrelay-floor"
os.makedirs(d,exist_ok=True)
p=d+"/f.db"
for f in (p,p+"-wal",p+"-shm"):
    if os.path.exists(f): os.remove(f)
c=sqlite3.connect(p,isolation_level=None)
c.execute("pragma journal_mode=wal"); c.execute("pragma synchronous=FULL"); c.execute("pragma foreign_keys=ON")
c.execute("pragma temp_store=memory"); c.execute("pragma wal_autocheckpoint=8000")
for f in sorted(glob.glob(os.path.join(root, "*.sql"))):
    if without and without in os.path.basename(f):
        continue
    c.executescript(f"BEGIN; {open(f).read()} COMMIT;")
K=200; now=lambda: int(time.time()*1e6)
# Relay ids are UUIDv7 (time first, crates/contract/src/payload.rs): new ones go to the end of their unique
# indexes. Same order here, without Python 3.14's uuid7.
seq=itertools.count()
rid=lambda: f"{time.time_ns():016x}-{next(seq):012x}"
sess=[str(uuid.uuid4()) for _ in range(K)]
c.execute("begin")
for i,s in enumerate(sess):
    c.execute("insert into sessions values(?,?,?,?,?,?,?,?,?,?,?)",(s,"cec","bench",f"u{i}","ch","active","tok",now(),None,None,now()))
c.execute("commit")
body=lambda i: json.dumps({"content":f"hello {i}","messageId":f"t{i}","controlType":"CHAT","mediaType":"TEXT"})
ev=lambda i: json.dumps({"type":"up.result","ok":True,"resultCode":"0","messageId":f"t{i}","tenant":"bench","userId":f"u{i%K}","at":"2026-12-02T00:00:00Z"})
msg="insert into messages(relay_id,kind,tenant,user_id,session_id,direction,message_id,message_code,control_type,media_type,content,body,status,result_code,created_at) values(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
t0=time.time(); pending=[]
for b0 in range(0,M,B):
    r=range(b0,min(M,b0+B))
    c.execute("begin immediate")
    if pending:
        c.executemany("delete from outbox where seq=?",[(s,) for s in pending])
    c.executemany(msg,[(rid(),"cec","bench",f"u{i%K}",sess[i%K],"up",f"t{i}",None,"CHAT","TEXT",f"hello {i}",body(i),"sent","0",now()) for i in r])
    c.executemany(msg,[(rid(),"cec","bench",f"u{i%K}",sess[i%K],"down",None,f"c{i}","CHAT","TEXT",f"robot {i}",body(i),"received",None,now()) for i in r])
    c.executemany("insert into events(relay_id,kind,tenant,user_id,session_id,event_type,ok,body,subject,created_at) values(?,?,?,?,?,?,?,?,?,?)",
        [(rid(),"cec","bench",f"u{i%K}",sess[i%K],"up.result",1,ev(i),f"ccrelay.cec.bench.event.u{i%K}",now()) for i in r])
    c.executemany("insert into outbox(msg_id,subject,payload,created_at) values(?,?,?,?)",
        [(rid(),f"ccrelay.cec.bench.event.u{i%K}",ev(i).encode(),now()) for i in r]+[(rid(),f"ccrelay.cec.bench.out.u{i%K}",body(i).encode(),now()) for i in r])
    c.executemany("update sessions set last_activity_at=? where id=?",[(now(),sess[i%K]) for i in r])
    c.execute("commit")
    pending=[x[0] for x in c.execute("select seq from outbox order by seq desc limit ?",(2*len(r),))]
secs=time.time()-t0
print(f"B={B} M={M} {M/secs:.0f} msg/s ({secs:.1f}s)")
