let hooked = 0;
document.querySelectorAll("table.sortable th").forEach((th, i) => {
 hooked++;
 th.addEventListener("click", () => {
  const tb = th.closest("table").tBodies[0], asc = th.dataset.dir !== "asc";
  th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = asc ? "asc" : "desc";
  const key = r => { const v = r.cells[i].dataset.v, n = parseFloat(v);
    return v === "" ? null : isNaN(n) ? v : n; };
  const isDetails = r => r !== null && r.classList.contains("details");
  const pairs = [...tb.rows].filter(r => !isDetails(r))
    .map(r => [r, isDetails(r.nextElementSibling) ? r.nextElementSibling : null]);
  pairs.sort(([a], [b]) => { const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    const c = x < y ? -1 : x > y ? 1 : 0; return asc ? c : -c; })
   .forEach(([r, d]) => { tb.appendChild(r); if (d) tb.appendChild(d); });
 });
});
document.body.dataset.sortable = hooked;
document.body.dataset.ready = "1";
