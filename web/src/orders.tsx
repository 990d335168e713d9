import { useEffect, useId, useState, type FormEvent } from "react";
import type { SubscribeLive } from "./live";
import { api, ApiError, type Order, type StockItem } from "./api";
import { reportFailure, type Notify } from "./messages";
import { useAbortSignal } from "./use-abort-signal";

/**
 * Stock and orders together, because they change together: placing or
 * cancelling an order moves stock, so both lists are reloaded afterwards.
 */
export function StockAndOrders({
  notify,
  subscribe,
}: {
  notify: Notify;
  subscribe?: SubscribeLive;
}) {
  const signal = useAbortSignal();
  const [stock, setStock] = useState<StockItem[] | null>(null);
  const [orders, setOrders] = useState<Order[] | null>(null);
  const [stockFailed, setStockFailed] = useState(false);
  const [ordersFailed, setOrdersFailed] = useState(false);

  async function loadStock() {
    const s = signal();
    setStockFailed(false);
    try {
      setStock(await api<StockItem[]>("/api/stock", { signal: s }));
    } catch (error) {
      if (s.aborted) return;
      setStockFailed(true);
      reportFailure(notify, error, "load", s);
    }
  }

  async function loadOrders() {
    const s = signal();
    setOrdersFailed(false);
    try {
      setOrders(await api<Order[]>("/api/orders", { signal: s }));
    } catch (error) {
      if (s.aborted) return;
      setOrdersFailed(true);
      reportFailure(notify, error, "load", s);
    }
  }

  useEffect(() => {
    void loadStock();
    void loadOrders();
  }, []);

  /** Both lists, after an order changed the stock. */
  function reloadAfterChange() {
    void loadStock();
    void loadOrders();
  }

  // An order placed or cancelled elsewhere moves stock too: both reload.
  useEffect(
    () =>
      subscribe?.((event) => {
        if (event.type.startsWith("order.")) reloadAfterChange();
      }),
    [subscribe],
  );

  return (
    <>
      <StockSection stock={stock} failed={stockFailed} onRetry={() => void loadStock()} />
      <section className="card" aria-labelledby="orders-heading">
        <h2 id="orders-heading">Orders</h2>
        <OrderForm stock={stock} notify={notify} signal={signal} onPlaced={reloadAfterChange} />
        {orders === null && !ordersFailed && <p className="muted">Loading orders…</p>}
        {ordersFailed && (
          <p>
            Orders could not be loaded.{" "}
            <button type="button" className="link" onClick={() => void loadOrders()}>
              Try again
            </button>
          </p>
        )}
        {orders !== null && orders.length === 0 && <p className="muted">No orders yet.</p>}
        {orders !== null && (
          <ul className="order-list" data-testid="order-list">
            {orders.map((order) => (
              <OrderItem
                key={order.id}
                order={order}
                name={stock?.find((item) => item.sku === order.sku)?.name}
                notify={notify}
                signal={signal}
                onCancelled={(cancelled) => {
                  setOrders((current) => current?.map((o) => (o.id === cancelled.id ? cancelled : o)) ?? current);
                  reloadAfterChange();
                }}
              />
            ))}
          </ul>
        )}
      </section>
    </>
  );
}

function StockSection({ stock, failed, onRetry }: { stock: StockItem[] | null; failed: boolean; onRetry: () => void }) {
  return (
    <section className="card" aria-labelledby="stock-heading">
      <h2 id="stock-heading">Stock</h2>
      {stock === null && !failed && <p className="muted">Loading stock…</p>}
      {failed && (
        <p>
          Stock could not be loaded.{" "}
          <button type="button" className="link" onClick={onRetry}>
            Try again
          </button>
        </p>
      )}
      {stock !== null && (
        // The wrapper scrolls on its own if a name is very long, so the page
        // itself never scrolls sideways on a phone.
        <div className="table-wrap">
          <table data-testid="stock-table">
            <thead>
              <tr>
                <th scope="col">SKU</th>
                <th scope="col">Name</th>
                <th scope="col" className="num">
                  Quantity
                </th>
              </tr>
            </thead>
            <tbody>
              {stock.length === 0 && (
                <tr>
                  <td colSpan={3} className="muted">
                    Nothing in stock.
                  </td>
                </tr>
              )}
              {stock.map((item) => (
                <tr key={item.sku}>
                  <td>
                    <code>{item.sku}</code>
                  </td>
                  <td>{item.name}</td>
                  <td className="num">{item.quantity}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

interface OrderFormProps {
  stock: StockItem[] | null;
  notify: Notify;
  signal: () => AbortSignal;
  onPlaced: () => void;
}

function OrderForm({ stock, notify, signal, onPlaced }: OrderFormProps) {
  const [sku, setSku] = useState("");
  const [quantity, setQuantity] = useState("1");
  const [busy, setBusy] = useState(false);
  const skuId = useId();
  const quantityId = useId();

  // Until the user picks, the first item is the choice; kept in sync so a
  // reload of the stock list never leaves a vanished sku selected.
  const selected = stock?.some((item) => item.sku === sku) ? sku : (stock?.[0]?.sku ?? "");

  async function place(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    if (busy || selected === "") return;
    // Browsers report an unparsable number field as empty, and the server's
    // answer to a non-number body is written for developers, so this one
    // check is made here; limits such as a maximum stay with the server.
    const amount = Number(quantity);
    if (quantity.trim() === "" || !Number.isInteger(amount) || amount < 1) {
      notify({ kind: "error", text: "Enter a whole number of 1 or more for the quantity." });
      return;
    }
    const s = signal();
    setBusy(true);
    try {
      await api<Order>("/api/orders", { method: "POST", json: { sku: selected, quantity: amount }, signal: s });
      notify({ kind: "info", text: "Order placed." });
      onPlaced();
    } catch (error) {
      reportFailure(notify, error, "order", s);
      // A shortage means the list on screen is out of date.
      if (error instanceof ApiError && error.status === 409 && !s.aborted) onPlaced();
    } finally {
      if (!s.aborted) setBusy(false);
    }
  }

  if (stock !== null && stock.length === 0) {
    return <p className="muted">There is nothing to order right now.</p>;
  }

  return (
    <form className="order-form" onSubmit={place}>
      <div className="field">
        <label htmlFor={skuId}>Item</label>
        <select id={skuId} value={selected} onChange={(e) => setSku(e.target.value)} disabled={stock === null}>
          {stock?.map((item) => (
            <option key={item.sku} value={item.sku}>
              {item.name} ({item.sku}), {item.quantity} in stock
            </option>
          ))}
        </select>
      </div>
      <div className="field quantity">
        <label htmlFor={quantityId}>Quantity</label>
        <input
          id={quantityId}
          type="number"
          inputMode="numeric"
          min={1}
          step={1}
          value={quantity}
          onChange={(e) => setQuantity(e.target.value)}
        />
      </div>
      <button type="submit" aria-disabled={busy || stock === null}>
        Place order
      </button>
    </form>
  );
}

interface OrderItemProps {
  order: Order;
  name: string | undefined;
  notify: Notify;
  signal: () => AbortSignal;
  onCancelled: (order: Order) => void;
}

function OrderItem({ order, name, notify, signal, onCancelled }: OrderItemProps) {
  const [busy, setBusy] = useState(false);

  async function cancel() {
    if (busy) return;
    const s = signal();
    setBusy(true);
    try {
      const cancelled = await api<Order>(`/api/orders/${order.id}`, { method: "DELETE", signal: s });
      onCancelled(cancelled);
      notify({ kind: "info", text: "Order cancelled; its stock was returned." });
    } catch (error) {
      reportFailure(notify, error, "order", s);
    } finally {
      if (!s.aborted) setBusy(false);
    }
  }

  return (
    <li className="order" aria-busy={busy}>
      <div className="order-main">
        <span className="order-what">
          {order.quantity} × {name ?? order.sku} <code>{order.sku}</code>
        </span>
        <span className="order-meta">
          Order #{order.id}, <time dateTime={order.created_at}>{formatDate(order.created_at)}</time>
        </span>
      </div>
      <span className={`status status-${order.status === "placed" ? "placed" : "cancelled"}`}>{order.status}</span>
      {order.status === "placed" && (
        <button type="button" className="secondary" onClick={() => void cancel()} aria-disabled={busy}>
          Cancel<span className="visually-hidden"> order #{order.id}</span>
        </button>
      )}
    </li>
  );
}

function formatDate(iso: string): string {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}
