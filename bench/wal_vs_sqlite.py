import os, sqlite3, time, statistics, sys, tempfile, zlib, struct
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sidecar.exporthelper.wal import encode_header
N=20000
payload=os.urandom(10240)
def seglog(d):
    fd=os.open(os.path.join(d,"x.seg"), os.O_WRONLY|os.O_CREAT|os.O_APPEND)
    t=time.perf_counter()
    for i in range(N):
        h=encode_header(i,0.0,100,payload); os.writev(fd,[h,payload])
    el=time.perf_counter()-t; os.close(fd); return el/N*1e6
def sq(d, per):
    c=sqlite3.connect(os.path.join(d,"q.db"), isolation_level=None)
    c.execute("pragma journal_mode=wal"); c.execute("pragma synchronous=off")
    c.execute("create table q(seq integer primary key, items int, payload blob)")
    t=time.perf_counter()
    for i in range(0,N,per):
        if per>1: c.execute("begin")
        for j in range(i,i+per): c.execute("insert into q values(?,?,?)",(j,100,payload))
        if per>1: c.execute("commit")
    el=time.perf_counter()-t; c.close(); return el/N*1e6
res={"seg":[],"sq1":[],"sq100":[]}
for r in range(5):
    for k,f in (("seg",seglog),("sq1",lambda d: sq(d,1)),("sq100",lambda d: sq(d,100))):
        with tempfile.TemporaryDirectory(dir=None) as d: res[k].append(f(d))
for k,v in res.items(): print(k, "median us/req", round(statistics.median(v),1), [round(x,1) for x in v])
