// ct-gateway form-capture snippet (served by GET /snippet.js without these // comment lines).
// <script src="/ct-gateway/snippet.js" data-mod-id="abcd1234" async></script>; optional
// data-endpoint (default: "leads" beside this script), data-forms (a CSS selector), data-subject.
// Form markup: data-ct-field="fio|phoneNumber|email|comment|subject|tags|custom:NAME",
// data-ct-skip, data-ct-honeypot, data-ct-subject and data-ct-ignore (on the form).
// Manual API, with a stub for calls made before this script loads:
//   window.ctLeads=window.ctLeads||{q:[],send:function(d){var q=this.q;return new Promise(function(r){q.push([d,r])})}};
//   ctLeads.send({phoneNumber:"...", fio:"..."}).then(function(answer){...});
// Never throws into the page, never calls preventDefault, never delays the site's handlers.
((w,d,N)=>{try{
let s=d.currentScript,A=n=>s.getAttribute("data-"+n),T=Date.now,K="ctgw_q",
M=A("mod-id")||/*CTGW_MOD_ID*/"",F=A("forms"),J=A("subject"),
E=A("endpoint")||new URL("leads",s.src).href,
H=new Set,P={},X=0,
S=x=>x==null?"":(""+x).trim(),
R=()=>"ctgw-"+T()+Math.random().toString(36).slice(2),
// retry queue: at most 20 leads, none older than 72 h; nothing in private mode
Q=f=>{try{let q=JSON.parse(localStorage[K]||"[]");f&&(localStorage[K]=JSON.stringify(q=f(q).filter(x=>x.t>T()-2592e5).slice(-20)));return q}catch(e){return[]}},
// a lead stays queued until answered for good (2xx, 4xx but 429)
B=l=>{let n=l.requestNumber,b=JSON.stringify(l),D=()=>Q(q=>q.filter(x=>x.l.requestNumber!=n));
Q(q=>q.some(x=>x.l.requestNumber==n)?q:q.concat({t:T(),l}));
return w.fetch?fetch(E,{method:"POST",keepalive:!0,body:b})
.then(r=>r.status==429||r.status>499?{status:"deferred"}:(D(),r.json())).catch(()=>({status:"deferred"}))
:Promise.resolve({status:N.sendBeacon(E,b)&&D()?"sent":"deferred"})},
U=()=>Q().forEach(x=>B(x.l)),
I=()=>{try{return S((M&&w.ct("calltracking_params",M)||{}).sessionId)}catch(e){}},
C=()=>{try{return(d.cookie.match(/(^|; )_ct_session_id=(\d+)/)||[])[2]}catch(e){}},
// Calltouch's script may be loading: poll it up to 1.5 s, or until the page is left
V=l=>new Promise(r=>{let t=T(),k=()=>{try{let v=l.sessionId||I();
if(!v&&!X&&M&&w.ct&&T()-t<1500)return setTimeout(k,99);
H.delete(k);v=v||C();l.sessionId=/^\d{1,20}$/.test(v)?v:void 0;r(B(l))}catch(e){r({})}};H.add(k);k()}),
G=l=>(l.requestUrl=location.href.slice(0,2048),l.subject=S(l.subject||J||d.title).slice(0,256),l.requestNumber=l.requestNumber||R(),l),
// what a field is: data-ct-field, else its type, name, id, autocomplete, placeholder
Y=(e,t,h)=>(h=[t,e.name,e.id,e.autocomplete,e.placeholder].join().toLowerCase(),
/^(check|radio|select)/.test(t)?"":/mail|почт/.test(h)?"email":/phone|tel|mob|телеф|моб/.test(h)?"phoneNumber"
:/fio|фио|имя|фамил|name/.test(h)&&!/compan|компан|user/.test(h)?"fio":/textarea|comment|messag|коммент|сообщ/.test(h)?"comment":/subject|тема/.test(h)?"subject":""),
Z=(k,v)=>k=="email"?/^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$/.test(v):k!="phoneNumber"||/^[78]?\d{10}$/.test(v.replace(/\D/g,"")),
O=f=>{let l={},c={},g=a=>f.getAttribute(a);
for(let e of f.elements){let t=e.type,x=e.dataset.ctField||"",u=/^custom:/.test(x),n=u?x.slice(7):e.name||e.id||"",v,k;
if("ctHoneypot"in e.dataset){l._honeypot=S(e.value);continue}
if(!t||e.disabled||"ctSkip"in e.dataset||/^(password|file|submit|button|reset|image)$/.test(t)||t=="hidden"&&!x
||/pass|парол|card|cv[vc]|[cx]srf|token|nonce|captcha/i.test(n)||/^cc-/.test(e.autocomplete))continue;
v=t=="select-multiple"?[...e.selectedOptions].map(o=>o.value).join(", "):/^(checkbox|radio)$/.test(t)&&!e.checked?"":S(e.value);
k=u?"":x||Y(e,t);
if(!v)continue;
if(k=="fio"&&l.fio){l.fio=(l.fio+" "+v).slice(0,256);continue}
if(/^(fio|phoneNumber|email|subject|comment|tags)$/.test(k)&&!l[k]&&Z(k,v)){l[k]=v.slice(0,k=="comment"?4096:256);continue}
n=n.replace(/[[\]]/g,"").slice(0,64);
n&&(c[n]||Object.keys(c).length<20)&&(c[n]=((c[n]?c[n]+", ":"")+v).slice(0,1024))}
return(l.fio||l.phoneNumber||l.email)&&(l.customFields=c,l.subject=l.subject||f.dataset.ctSubject||J||g("name")||g("id"),l)};
// capture phase on document: forms added later too; the site's own handlers run unchanged
d.addEventListener("submit",e=>{try{let f=e.target,l,k;
if(f instanceof HTMLFormElement&&!("ctIgnore"in f.dataset)&&(!F||f.matches(F))
&&(f.noValidate||f.checkValidity())&&(l=O(f))){
// a double submit of the same data within 10 s keeps its number: the gateway dedups it;
// _elapsed (ms since page load) feeds the gateway's bot score, and retries keep it
k=JSON.stringify(l);l.requestNumber=P.k==k&&T()-P.t<1e4?P.n:R();P={k,n:l.requestNumber,t:T()};l._elapsed=Math.round(performance.now());V(G(l))}}catch(x){}},!0);
w.addEventListener("pagehide",()=>{X=1;H.forEach(k=>k())});
w.addEventListener("online",U);setTimeout(U,1e3);
// manual API; replays calls queued by the stub before this script ran
let o=w.ctLeads,a=w.ctLeads={send:o=>V(G(Object.assign({},o)))};
(o&&o.q||[]).forEach(([o,r])=>{let p=a.send(o);r&&p.then(r)})
}catch(e){}})(window,document,navigator);
